"""reduce(): which Services and endpoints make the snapshot, and how bad input is isolated."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from weir.common.pb import pb
from weir.common.tablesize import DEFAULT_TABLE_SIZE
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.reduce import ReduceConfig, frontend_id, reduce
from weir.controller.core.state import ClusterState

from tests.controller.reduce_support import (
    FILES,
    KUBE,
    EndpointSpec,
    backends,
    endpoint_slice,
    errors_for,
    node,
    peer,
    run,
    service,
    weir,
)
from tests.kube.builders import secret

T, F, U = True, False, None  # condition values; U = unset


# KEP-1669: ready & not terminating serve; else serving & terminating; never
# terminating & not serving. Each case: slices of (address, ready, serving, terminating).
KEP_1669 = [
    pytest.param([[("10.0.0.1", T, T, F), ("10.0.0.2", T, T, F)]], ["10.0.0.1", "10.0.0.2"],
                 id="all-ready"),
    pytest.param([[("10.0.0.1", T, T, F), ("10.0.0.2", F, T, T)]], ["10.0.0.1"],
                 id="ready-beats-serving-terminating"),
    pytest.param([[("10.0.0.1", F, T, T), ("10.0.0.2", F, T, T), ("10.0.0.3", F, F, T)]],
                 ["10.0.0.1", "10.0.0.2"], id="fallback-to-serving-terminating"),
    pytest.param([[("10.0.0.1", F, F, T), ("10.0.0.2", F, F, T)]], [],
                 id="never-terminating-not-serving"),
    pytest.param([[("10.0.0.1", F, F, F)]], [], id="not-ready-not-terminating"),
    pytest.param([[("10.0.0.1", F, T, F), ("10.0.0.2", F, T, T)]], ["10.0.0.2"],
                 id="serving-but-not-ready-is-not-a-fallback"),
    pytest.param([[("10.0.0.1", U, U, U)]], ["10.0.0.1"], id="unset-means-ready"),
    pytest.param([[("10.0.0.1", F, U, T)]], ["10.0.0.1"], id="unset-serving-means-serving"),
    pytest.param([[("10.0.0.1", T, T, T), ("10.0.0.2", F, F, T)]], ["10.0.0.1"],
                 id="ready-but-terminating-is-fallback-only"),
    pytest.param([[("10.0.0.1", F, T, T)], [("10.0.0.9", T, T, F)]], ["10.0.0.9"],
                 id="ready-in-another-slice-wins"),
    pytest.param([[("10.0.0.1", T, T, F)], [("10.0.0.1", T, T, F), ("10.0.0.2", T, T, F)]],
                 ["10.0.0.1", "10.0.0.2"], id="duplicate-across-slices-once"),
    pytest.param([], [], id="no-slices"),
]  # fmt: skip


@pytest.mark.parametrize(("slices", "expected"), KEP_1669)
def test_kep_1669_endpoint_selection(slices: list[list[EndpointSpec]], expected: list[str]) -> None:
    objs: list[Any] = [service("web", ips=["192.0.2.1"])]
    objs += [endpoint_slice(f"web-{i}", "web", eps) for i, eps in enumerate(slices)]
    result = run(objs)
    assert backends(result, "192.0.2.1:80/TCP") == [(a, 8080) for a in expected]


def test_frontends_per_vip_port_protocol_sorted_with_ids() -> None:
    objs = [
        service(
            "web",
            ips=["2001:DB8::1", "192.0.2.1"],
            ports=[("http", 80, "TCP"), ("dns", 53, "UDP"), ("sig", 5060, "SCTP")],
            affinity_timeout=300,
            annotations={"weir.dev/maglev-table-size": "251"},
        ),
        endpoint_slice(
            "web-v4",
            "web",
            ["10.0.0.10", "10.0.0.9"],
            ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
        ),
        endpoint_slice("web-v6", "web", ["fd00::2"], family="IPv6", ports=[("http", 80, "TCP")]),
    ]
    result = run(objs)
    ids = [s.id for s in result.cluster.services]
    assert ids == sorted(ids)
    assert set(ids) == {
        "192.0.2.1:80/TCP",
        "192.0.2.1:53/UDP",
        "192.0.2.1:5060/SCTP",
        "[2001:db8::1]:80/TCP",
        "[2001:db8::1]:53/UDP",
        "[2001:db8::1]:5060/SCTP",
    }
    # Backends of the VIP's family only, sorted numerically by address.
    assert backends(result, "192.0.2.1:80/TCP") == [("10.0.0.9", 8080), ("10.0.0.10", 8080)]
    assert backends(result, "192.0.2.1:53/UDP") == [("10.0.0.9", 5353), ("10.0.0.10", 5353)]
    assert backends(result, "[2001:db8::1]:80/TCP") == [("fd00::2", 80)]
    assert backends(result, "192.0.2.1:5060/SCTP") == []  # no slice port named sig
    s = next(s for s in result.cluster.services if s.id == "192.0.2.1:53/UDP")
    assert (s.vip, s.port, s.protocol, s.port_name) == ("192.0.2.1", 53, pb.PROTOCOL_UDP, "dns")
    assert s.strategy == pb.STRATEGY_MAGLEV and s.maglev_table_size == 251
    assert s.session_affinity == pb.SESSION_AFFINITY_CLIENT_IP
    assert s.affinity_timeout_seconds == 300 and s.service == "default/web"
    b = s.backends[0]
    assert (b.weight, b.node, b.ready, b.serving, b.terminating) == (1, "worker-1", T, T, F)
    assert result.cluster.maglev_seed == 7 and result.cluster.version == 0
    assert len(result.cluster.hash) == 64 and result.errors == ()


def test_frontend_id() -> None:
    assert frontend_id("192.0.2.10", 80, "TCP") == "192.0.2.10:80/TCP"
    assert frontend_id("2001:db8::1", 443, "TCP") == "[2001:db8::1]:443/TCP"


def test_which_services_are_handled() -> None:
    objs = [
        service("by-class", ips=["192.0.2.1"]),
        service(
            "by-annotation",
            ips=["192.0.2.2"],
            cls=None,
            annotations={"weir.dev/traffic-strategy": "random"},
        ),
        service("classless", ips=["192.0.2.3"], cls=None),
        service("other-class", ips=["192.0.2.4"], cls="metallb.io/bgp"),
        service("cluster-ip", ips=["192.0.2.5"], svc_type="ClusterIP"),
    ]
    vips = {s.vip: s for s in run(objs).cluster.services}
    assert set(vips) == {"192.0.2.1", "192.0.2.2"}
    assert vips["192.0.2.2"].strategy == pb.STRATEGY_RANDOM
    assert vips["192.0.2.1"].maglev_table_size == DEFAULT_TABLE_SIZE
    default = ReduceConfig(maglev_seed=7, vips_from_annotation=True, default_class=True)
    assert {s.vip for s in run(objs, default).cluster.services} == {
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
    }


def test_vips_from_status_or_annotation() -> None:
    objs = [service("web", ips=["192.0.2.1"], status_ips=["198.51.100.1"])]
    assert [s.vip for s in run(objs, KUBE).cluster.services] == ["198.51.100.1"]
    assert sorted(s.vip for s in run(objs, FILES).cluster.services) == [
        "192.0.2.1",
        "198.51.100.1",
    ]
    # Waiting for IPAM is no error; in file mode a Service without any VIP is.
    bare = [service("web", ips=None)]
    assert run(bare, KUBE).errors == ()
    assert errors_for(run(bare, FILES), "Service", "web") == [
        "no VIP: set the weir.dev/load-balancer-ips annotation"
    ]


def test_conflicting_frontends_oldest_wins() -> None:
    shared = {"weir.dev/sharing-key": "web"}  # one VIP: Services may share it with one key
    objs = [
        service(
            "young",
            "a",
            ips=["192.0.2.1"],
            created="2024-02-01T00:00:00Z",
            ports=[("http", 80, "TCP"), ("alt", 8080, "TCP")],
            annotations=shared,
        ),
        service("old", "z", ips=["192.0.2.1"], created="2024-01-01T00:00:00Z", annotations=shared),
        endpoint_slice(
            "young-1",
            "young",
            ["10.0.0.1"],
            ns="a",
            ports=[("http", 8080, "TCP"), ("alt", 8081, "TCP")],
        ),
        endpoint_slice("old-1", "old", ["10.0.0.2"], ns="z"),
        # Same VIP and port, other protocol: no conflict (TCP and UDP may share).
        service("udp", "b", ips=["192.0.2.1"], ports=[("http", 80, "UDP")], annotations=shared),
    ]
    result = run(objs)
    by_id = {s.id: s for s in result.cluster.services}
    assert by_id["192.0.2.1:80/TCP"].service == "z/old"
    assert by_id["192.0.2.1:8080/TCP"].service == "a/young"  # its other port still flows
    assert by_id["192.0.2.1:80/UDP"].service == "b/udp"
    # Each frontend carries its Service's age: nodes short of capacity serve the oldest first.
    assert by_id["192.0.2.1:80/TCP"].created_unix_seconds == 1704067200  # 2024-01-01
    assert by_id["192.0.2.1:8080/TCP"].created_unix_seconds == 1706745600  # 2024-02-01
    assert by_id["192.0.2.1:80/UDP"].created_unix_seconds == 0  # no timestamp
    assert errors_for(result, "Service", "young") == [
        "frontend 192.0.2.1:80/TCP is also claimed by z/old, which is older; "
        "it is left out for this Service"
    ]
    # Without timestamps the tie is broken by namespace/name, never by arrival order.
    for order in (objs[:2], objs[1::-1]):
        untimed = [dict(o, metadata={**o["metadata"], "creationTimestamp": None}) for o in order]
        assert run(untimed).cluster.services[0].service == "a/young"


def test_bad_objects_are_isolated() -> None:
    good = [
        service("good", ips=["192.0.2.1"]),
        endpoint_slice("good-1", "good", ["10.0.0.1", "10.0.0.2"]),
    ]
    bad: list[Any] = [
        service("bad-vip", ips=["192.0.2.300"]),
        service("bad-port", ips=["192.0.2.2"], ports=[("http", 65536, "TCP")]),
        service("bad-size", ips=["192.0.2.3"], annotations={"weir.dev/maglev-table-size": "10"}),
        service(
            "bad-strategy",
            ips=["192.0.2.4"],
            cls=None,
            annotations={"weir.dev/traffic-strategy": "fastest"},
        ),
        {"kind": "Service", "metadata": {"namespace": "default"}},  # no name
        {
            "kind": "EndpointSlice",
            "metadata": {"name": "orphan"},
            "addressType": "IPv4",
            "endpoints": "nope",
        },
        {"kind": "Service", "metadata": {"name": "bad-spec"}, "spec": "LoadBalancer"},
        "not an object",
        None,
        42,
        ["a", "list"],
        {"kind": "Deployment", "metadata": {"name": "ignored"}},
    ]
    half = endpoint_slice("good-2", "good", ["10.0.0.3"])
    half["endpoints"].append({"addresses": ["10.0.0.x"], "conditions": {"ready": True}})
    state = ClusterState()
    state.replace(ALL_KINDS, [*bad[:3], *good, half, *bad[3:]])
    result = reduce(state.inputs(), FILES)

    assert [s.id for s in result.cluster.services] == ["192.0.2.1:80/TCP"]
    assert backends(result, "192.0.2.1:80/TCP") == [
        ("10.0.0.1", 8080),
        ("10.0.0.2", 8080),
        ("10.0.0.3", 8080),
    ]
    parse_errors = {(e.kind, e.namespace, e.name): e.message for e in state.errors()}
    assert "65536 is out of range" in parse_errors[("Service", "default", "bad-port")]
    assert "metadata.name: required" in parse_errors[("Service", "default", "")]
    assert "spec: expected an object" in parse_errors[("Service", "default", "bad-spec")]
    assert "endpoints: expected a list" in parse_errors[("EndpointSlice", "default", "orphan")]
    assert len(parse_errors) == 4
    assert "'192.0.2.300' is not an IP address" in errors_for(result, "Service", "bad-vip")[0]
    assert (
        "not prime" in errors_for(result, "Service", "bad-size")[0]
        or "out of range" in (errors_for(result, "Service", "bad-size")[0])
    )
    assert "'fastest' is not maglev or random" in errors_for(result, "Service", "bad-strategy")[0]
    assert errors_for(result, "EndpointSlice", "good-2") == [
        "endpoints[1]: addresses[0]: '10.0.0.x' is not an IPv4 address; endpoint skipped"
    ]
    assert {e.name for e in result.errors} == {"bad-vip", "bad-size", "bad-strategy", "good-2"}
    assert list(result.errors) == sorted(
        result.errors, key=lambda e: (e.kind, e.namespace, e.name, e.message)
    )


def test_a_bad_update_replaces_the_good_object_and_is_reported() -> None:
    state = ClusterState()
    state.replace(ALL_KINDS, [service("web"), endpoint_slice("web-1", "web", ["10.0.0.1"])])
    assert [s.id for s in reduce(state.inputs(), FILES).cluster.services] == ["192.0.2.1:80/TCP"]
    state.upsert(service("web", ports=[("http", 0, "TCP")]))
    assert reduce(state.inputs(), FILES).cluster.services == []
    assert [e.name for e in state.errors()] == ["web"]
    state.upsert(service("web"))
    assert state.errors() == []
    assert len(reduce(state.inputs(), FILES).cluster.services) == 1
    state.upsert(service("web", ports=[("http", 0, "TCP")]))
    state.delete("Service", "default", "web")
    assert state.errors() == [] and state.inputs().services == {}


def test_slice_of_unhandled_service_is_not_reported() -> None:
    half = endpoint_slice("other-1", "other", ["10.0.0.1"])
    half["endpoints"].append({"addresses": ["bogus"]})
    result = run([service("other", cls="someone.else/lb"), half])
    assert result.errors == () and result.cluster.services == []


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON-like value that can be replaced."""
    out = [prefix] if prefix else []
    if isinstance(value, dict | list):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            out += _paths(v, (*prefix, k))
    return out


def _valid_cluster() -> list[Any]:
    return [
        service("web", labels={"app": "web"}, affinity_timeout=60),
        endpoint_slice("web-1", "web", ["10.0.0.1", ("10.0.0.2", False, True, True)]),
        node("lb-1", "172.16.0.1", lb="yes"),
        peer("tor", nodeSelector={"matchLabels": {"lb": "yes"}},
             passwordSecretRef={"namespace": "weir", "name": "bgp"},
             gracefulRestart={"enabled": True}),
        secret("bgp", "weir", password="pw"),
        weir("LoadBalancerIPPool", "pool", {"cidrs": ["192.0.2.0/24"],
             "ranges": [{"start": "192.0.3.1", "end": "192.0.3.9"}]}),
        weir("BGPAdvertisement", "ad", {"communities": ["65000:1"], "peers": ["tor"],
             "serviceSelectors": [{"matchLabels": {"app": "web"}}]}),
    ]  # fmt: skip


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_objects_never_crash_state_or_reduce(data: st.DataObject) -> None:
    objs = _valid_cluster()
    for _ in range(data.draw(st.integers(1, 4))):
        target = data.draw(st.sampled_from(objs))
        *parents, last = data.draw(st.sampled_from(_paths(target)))
        holder = target
        for key in parents:
            holder = holder[key]
        holder[last] = data.draw(JSON)
    state = ClusterState()
    state.replace(ALL_KINDS, objs)
    for config in (FILES, KUBE):
        result = reduce(state.inputs(), config)
        assert result.cluster.hash
    for obj in objs:
        state.upsert(obj)
    reduce(state.inputs(), FILES)
