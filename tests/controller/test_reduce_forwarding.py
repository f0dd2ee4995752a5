"""reduce(): how each backend is reached (weir.dev/forwarding), node roles and each node's
NodeConfig (docs/FORWARDING.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from weir.common.pb import pb
from weir.controller.core.reduce import ReduceResult
from weir.controller.core.selectors import parse_selector_string

from tests.controller.reduce_support import (
    FILES,
    LB,
    endpoint_slice,
    errors_for,
    node,
    peer,
    run,
    service,
)

ENCAP, L2 = pb.FORWARDING_ENCAP, pb.FORWARDING_L2_DSR
FID = "192.0.2.1:80/TCP"

NODES = [
    node("lb-2", "10.0.0.12", **LB),
    node("lb-1", "10.0.0.11", **LB),
    node("lb-10", "10.0.0.9", **LB),
    node("w1", "10.0.1.1"),
    node("w2", "10.0.1.2"),
    node("no-ip", None),  # only a Hostname address
]


def backends_of(result: ReduceResult, fid: str = FID) -> list[tuple[str, int, str, int, str]]:
    """(address, port, node, forwarding, node_address) of each backend of a frontend."""
    (svc,) = [s for s in result.cluster.services if s.id == fid]
    return [(b.address, b.port, b.node, b.forwarding, b.node_address) for b in svc.backends]


def configs(result: ReduceResult) -> dict[str, pb.NodeConfig]:
    return {v.node: v.config for v in result.cluster.node_views}


def pods(mode: str | None = None, **spec: Any) -> list[Any]:
    """web (port 80) with pods on w1, w2, an unknown node, a node without an address, and a
    host without nodeName; all listen on 8080."""
    annotations = {"weir.dev/forwarding": mode} if mode is not None else {}
    return [
        service("web", annotations=annotations, spec=spec),
        endpoint_slice("web-w1", "web", ["10.244.1.10", "10.244.1.11"], node="w1"),
        endpoint_slice("web-w2", "web", ["10.244.2.10"], node="w2"),
        endpoint_slice("web-gone", "web", ["10.244.9.10"], node="gone"),
        endpoint_slice("web-noip", "web", ["10.244.8.10"], node="no-ip"),
        endpoint_slice("web-host", "web", ["10.0.2.20"], node=None),
    ]


def test_auto_encapsulates_to_known_nodes_and_uses_l2_for_the_rest() -> None:
    result = run([*pods(), *NODES])
    assert backends_of(result) == [
        ("10.0.2.20", 8080, "", L2, ""),
        ("10.244.1.10", 8080, "w1", ENCAP, "10.0.1.1"),
        ("10.244.1.11", 8080, "w1", ENCAP, "10.0.1.1"),
        ("10.244.2.10", 8080, "w2", ENCAP, "10.0.1.2"),
        ("10.244.8.10", 8080, "no-ip", L2, ""),
        ("10.244.9.10", 8080, "gone", L2, ""),
    ]
    assert errors_for(result, "Service", "web") == []


def test_encap_leaves_out_endpoints_without_a_node_address() -> None:
    result = run([*pods("encap"), *NODES])
    assert backends_of(result) == [
        ("10.244.1.10", 8080, "w1", ENCAP, "10.0.1.1"),
        ("10.244.1.11", 8080, "w1", ENCAP, "10.0.1.1"),
        ("10.244.2.10", 8080, "w2", ENCAP, "10.0.1.2"),
    ]
    assert errors_for(result, "Service", "web") == [
        f"frontend {FID}: weir.dev/forwarding is encap; endpoints left out, on no Node with "
        "an IPv4 InternalIP: 10.0.2.20 (no node), 10.244.8.10 (node 'no-ip'), "
        "10.244.9.10 (node 'gone')"
    ]


def test_encap_with_no_usable_endpoint_announces_nothing() -> None:
    objs = [
        service("web", annotations={"weir.dev/forwarding": "encap"}),
        endpoint_slice("web-1", "web", ["10.244.9.10", "10.244.9.11"], node="gone"),
        *NODES,
        peer("tor"),
    ]
    result = run(objs)
    assert backends_of(result) == []
    assert all(not n.bgp.advertisements for n in result.cluster.nodes)
    (message,) = errors_for(result, "Service", "web")
    assert "10.244.9.10 (node 'gone'), 10.244.9.11 (node 'gone')" in message


def test_l2_leaves_out_endpoints_on_another_port() -> None:
    objs = [
        service("web", annotations={"weir.dev/forwarding": "l2"}),
        endpoint_slice("web-80", "web", ["10.0.2.20", "10.244.1.10"], ports=[("http", 80, "TCP")]),
        endpoint_slice("web-8080", "web", ["10.0.2.21", "10.0.2.22", "10.0.2.23", "10.0.2.24"]),
        *NODES,
    ]
    objs[1]["endpoints"][1]["nodeName"] = "w1"  # a known node: still L2 DSR
    result = run(objs)
    assert backends_of(result) == [
        ("10.0.2.20", 80, "worker-1", L2, ""),
        ("10.244.1.10", 80, "w1", L2, ""),
    ]
    assert errors_for(result, "Service", "web") == [
        f"frontend {FID}: weir.dev/forwarding is l2, which cannot translate ports; endpoints "
        "left out, listening on another port than 80: 10.0.2.21:8080, 10.0.2.22:8080, "
        "10.0.2.23:8080 and 1 more"
    ]
    assert configs(result)["w1"].local_endpoints == []


@pytest.mark.parametrize("value", ["ENCAP", "dsr", ""])
def test_a_bad_forwarding_value_is_reported_and_auto_is_used(value: str) -> None:
    result = run([*pods(value), *NODES])
    auto = run([*pods(), *NODES])
    assert result.cluster.services == auto.cluster.services
    assert result.cluster.node_views == auto.cluster.node_views
    assert errors_for(result, "Service", "web") == [
        f"annotation weir.dev/forwarding: {value!r} is not auto, encap or l2; auto is used"
    ]


def test_named_target_ports_resolve_through_the_slice_port_name() -> None:
    # targetPort names a container port; the EndpointSlice controller writes each pod's
    # number under the Service port's name, one slice per distinct number.
    ports = [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]
    objs = [
        service("web", spec={"ports": ports}),
        endpoint_slice("web-a", "web", ["10.244.1.10"], node="w1", ports=[("http", 8080, "TCP")]),
        endpoint_slice("web-b", "web", ["10.244.2.10"], node="w2", ports=[("http", 9090, "TCP")]),
        *NODES,
    ]
    result = run(objs)
    assert backends_of(result) == [
        ("10.244.1.10", 8080, "w1", ENCAP, "10.0.1.1"),
        ("10.244.2.10", 9090, "w2", ENCAP, "10.0.1.2"),
    ]
    w1, w2 = configs(result)["w1"], configs(result)["w2"]
    assert [(e.address, e.port, e.target_port) for e in w1.local_endpoints] == [
        ("10.244.1.10", 80, 8080)
    ]
    assert [(e.address, e.port, e.target_port) for e in w2.local_endpoints] == [
        ("10.244.2.10", 80, 9090)
    ]


def test_node_configs_roles_local_endpoints_and_lb_addresses() -> None:
    objs = [
        *pods(),
        service("dns", ips=["192.0.2.2"], ports=[("dns", 53, "UDP")]),
        endpoint_slice("dns-1", "dns", ["10.244.1.53"], node="w1", ports=[("dns", 5353, "UDP")]),
        *NODES,
    ]
    result = run(objs)
    got = configs(result)
    assert list(got) == ["lb-1", "lb-10", "lb-2", "no-ip", "w1", "w2"]
    lb_addresses = ["10.0.0.9", "10.0.0.11", "10.0.0.12"]  # numerically sorted
    assert got["w1"] == pb.NodeConfig(
        address="10.0.1.1",
        encap_port=6093,
        local_endpoints=[
            pb.LocalEndpoint(
                service_id="192.0.2.1:80/TCP",
                vip="192.0.2.1",
                port=80,
                protocol=pb.PROTOCOL_TCP,
                address=a,
                target_port=8080,
            )
            for a in ("10.244.1.10", "10.244.1.11")
        ]
        + [
            pb.LocalEndpoint(
                service_id="192.0.2.2:53/UDP",
                vip="192.0.2.2",
                port=53,
                protocol=pb.PROTOCOL_UDP,
                address="10.244.1.53",
                target_port=5353,
            )
        ],
        lb_node_addresses=lb_addresses,
    )
    assert [e.address for e in got["w2"].local_endpoints] == ["10.244.2.10"]
    assert got["w2"].lb_node_addresses == lb_addresses
    for name, address in (("lb-1", "10.0.0.11"), ("lb-2", "10.0.0.12"), ("lb-10", "10.0.0.9")):
        # Load balancers: the role and the port; no local endpoints, so no LB addresses.
        assert got[name] == pb.NodeConfig(load_balancer=True, address=address, encap_port=6093)
    assert got["no-ip"] == pb.NodeConfig()
    assert result.errors == ()


def test_a_node_with_neither_role_has_only_its_address() -> None:
    result = run([*pods(), *NODES, node("idle", "10.0.1.9")])
    assert configs(result)["idle"] == pb.NodeConfig(address="10.0.1.9")


def test_the_node_address_is_the_first_ipv4_internal_ip() -> None:
    w3 = node("w3", None)
    w3["status"]["addresses"] = [
        {"type": "ExternalIP", "address": "203.0.113.3"},
        {"type": "InternalIP", "address": "fd00::3"},
        {"type": "InternalIP", "address": "10.0.1.3"},
        {"type": "InternalIP", "address": "10.0.1.4"},
    ]
    ext = node("ext", None)
    ext["status"]["addresses"] = [{"type": "ExternalIP", "address": "203.0.113.4"}]
    objs = [
        service("web"),
        endpoint_slice("web-w3", "web", ["10.244.3.10"], node="w3"),
        endpoint_slice("web-ext", "web", ["10.244.4.10"], node="ext"),
        w3,
        ext,
    ]
    result = run(objs)
    assert backends_of(result) == [
        ("10.244.3.10", 8080, "w3", ENCAP, "10.0.1.3"),
        ("10.244.4.10", 8080, "ext", L2, ""),
    ]
    assert configs(result)["w3"].address == "10.0.1.3"
    assert configs(result)["ext"].address == ""


def test_the_lb_node_selector_and_encap_port_come_from_the_config() -> None:
    objs = [
        *pods(),
        node("lb-1", "10.0.0.11", **LB),
        node("edge-1", "10.0.0.21", role="edge"),
        node("w1", "10.0.1.1", role="lb"),
    ]
    config = dataclasses.replace(
        FILES, lb_node_selector=parse_selector_string("role in (edge,lb)"), encap_port=7000
    )
    got = configs(run(objs, config))
    assert [n for n, c in got.items() if c.load_balancer] == ["edge-1", "w1"]
    assert got["lb-1"] == pb.NodeConfig(address="10.0.0.11")
    # w1 has both roles: it balances and it hosts pods.
    assert got["w1"].load_balancer and len(got["w1"].local_endpoints) == 2
    assert got["w1"].lb_node_addresses == ["10.0.0.21", "10.0.1.1"]
    assert got["w1"].encap_port == got["edge-1"].encap_port == 7000


def test_a_load_balancer_without_an_address_is_an_error_once_encapsulation_is_used() -> None:
    lonely = node("lb-3", None, **LB)
    message = (
        "load-balancer node without an IPv4 InternalIP: it cannot encapsulate to backends' "
        "nodes, and they would not accept its packets"
    )
    assert errors_for(run([*pods(), *NODES, lonely]), "Node", "lb-3") == [message]
    hosts_only = [service("web"), endpoint_slice("web-1", "web", ["10.0.2.20"], node=None)]
    result = run([*hosts_only, *NODES, lonely])
    assert errors_for(result, "Node", "lb-3") == []
    assert configs(result)["lb-3"] == pb.NodeConfig(load_balancer=True, encap_port=6093)


@pytest.mark.parametrize("policy", ["Local", "Cluster"])
def test_external_traffic_policy_local_is_served_like_cluster(policy: str) -> None:
    # Weir delivers every flow to the pod's own node and keeps the client address: Local's
    # promises hold with the same backends as Cluster (docs/FORWARDING.md).
    local = run([*pods(externalTrafficPolicy=policy, healthCheckNodePort=31000), *NODES])
    cluster = run([*pods(), *NODES])
    assert local.errors == cluster.errors
    assert local.cluster.services == cluster.cluster.services
    assert local.cluster.node_views == cluster.cluster.node_views
    assert len(backends_of(local)) == 6


def test_ipv6_endpoints_on_known_nodes_are_encapsulated_to_the_ipv4_node_address() -> None:
    objs = [
        service("web", ips=["2001:db8::1"]),
        endpoint_slice("web-v6", "web", ["fd00:244::10"], node="w1", family="IPv6"),
        *NODES,
    ]
    result = run(objs)
    assert backends_of(result, "[2001:db8::1]:80/TCP") == [
        ("fd00:244::10", 8080, "w1", ENCAP, "10.0.1.1")
    ]
    (endpoint,) = configs(result)["w1"].local_endpoints
    assert (endpoint.vip, endpoint.address) == ("2001:db8::1", "fd00:244::10")
