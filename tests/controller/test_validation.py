"""Input the API server would refuse or that would hurt others: bad names, addresses that cannot
be VIPs, VIPs shared without a common sharing key, frontends taken over by a forged age, and
terminal escapes in what weirctl prints."""

from __future__ import annotations

import asyncio

import pytest
from weir.common.pb import pb
from weir.controller.core.crds import parse_ip_pool
from weir.controller.core.objects import (
    ALL_KINDS,
    parse_endpoint_slice,
    parse_node,
    parse_object,
    parse_service,
)
from weir.controller.core.parsing import ParseError
from weir.controller.core.publish import Publisher
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.state import ClusterState
from weir.ctl.controller_cmds import format_agents, format_errors, format_node_snapshot

from tests.controller.reduce_support import (
    FILES,
    endpoint_slice,
    errors_for,
    node,
    run,
    service,
    weir,
)

pytestmark = pytest.mark.timeout(30)

BAD_NAMES = ["x" * 300, "web\nsecond-line", "web\x1b[31mred", "Web", "web_1", "-web", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_are_checked_as_kubernetes_does(name: str) -> None:
    with pytest.raises(ParseError, match=r"^metadata\.name: "):
        parse_service(service(name))
    with pytest.raises(ParseError, match=r"^metadata\.name: "):
        parse_endpoint_slice(endpoint_slice(name, "web", ["10.0.0.1"]))
    with pytest.raises(ParseError, match=r"^metadata\.name: "):
        parse_node(node(name))
    with pytest.raises(ParseError, match=r"^metadata\.namespace: "):
        parse_service(service("web", name or "x" * 64))
    with pytest.raises(ParseError, match=r"^metadata\.name: "):
        parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def test_names_kubernetes_accepts() -> None:
    # Services are DNS-1035 labels; the others DNS-1123 subdomains (dots, leading digits).
    assert parse_service(service("a" * 63, "b" * 63)).name == "a" * 63
    with pytest.raises(ParseError, match="not a DNS-1035 label"):
        parse_service(service("1web"))
    with pytest.raises(ParseError, match="longer than 63"):
        parse_service(service("a" * 64))
    assert parse_node(node("1node.rack-2.example")).name == "1node.rack-2.example"
    assert parse_node(node("n" * 253)).name == "n" * 253
    slice_name = "web-" + "x" * 200
    assert parse_endpoint_slice(endpoint_slice(slice_name, "web", [])).name == slice_name


@pytest.mark.parametrize(
    ("ip", "what"),
    [
        ("0.0.0.0", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("169.254.1.1", "link-local"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
    ],
)
def test_addresses_that_cannot_be_vips(ip: str, what: str) -> None:
    requested = parse_service(service("web", ips=[ip, "192.0.2.1"]))
    assert requested.requested_ips == ("192.0.2.1",)
    assert requested.problems == (
        f"annotation weir.dev/load-balancer-ips: {ip} is a {what} address, which cannot be a VIP",
    )
    held = parse_service(service("web", ips=None, status_ips=[ip]))
    assert held.ingress_ips == () and len(held.problems) == 1
    result = run([service("web", ips=[ip])])
    assert list(result.cluster.services) == []
    assert errors_for(result, "Service", "web") == [f"{requested.problems[0]}; Service skipped"]


def test_pools_of_addresses_that_cannot_be_vips() -> None:
    for spec in (
        {"cidrs": ["127.0.0.0/30"]},
        {"cidrs": ["224.0.0.0/24"]},
        {"cidrs": ["0.0.0.0/0"]},
        {"cidrs": ["fe80::/64"]},
        {"ranges": [{"start": "169.254.255.250", "end": "169.255.0.5"}]},
        {"ranges": [{"start": "255.255.255.0", "end": "255.255.255.255"}]},
    ):
        with pytest.raises(ParseError, match="which cannot be VIPs"):
            parse_ip_pool(weir("LoadBalancerIPPool", "p", spec))
    ok = weir("LoadBalancerIPPool", "p", {"cidrs": ["192.0.2.0/24", "2001:db8::/64"]})
    assert parse_ip_pool(ok).contains("192.0.2.7")


def test_a_vip_is_shared_only_with_one_sharing_key() -> None:
    web = service("web", ips=["192.0.2.1"], created="2024-01-01T00:00:00Z")
    keyless = service("api", ips=["192.0.2.1"], ports=[("https", 443, "TCP")])
    result = run([web, keyless])
    assert [s.service for s in result.cluster.services] == ["default/web"]
    assert errors_for(result, "Service", "api") == [
        "VIP 192.0.2.1 is used by default/web; Services share a VIP only when all carry the "
        "same weir.dev/sharing-key; its frontends on it are left out"
    ]

    def keyed(svc: dict, key: str) -> dict:
        svc["metadata"]["annotations"]["weir.dev/sharing-key"] = key
        return svc

    other_keys = run([keyed(web, "a"), keyed(keyless, "b")])
    assert [s.service for s in other_keys.cluster.services] == ["default/web"]
    assert errors_for(other_keys, "Service", "api") == errors_for(result, "Service", "api")
    same_key = run([keyed(web, "a"), keyed(keyless, "a")])
    assert sorted(s.service for s in same_key.cluster.services) == ["default/api", "default/web"]
    assert same_key.errors == ()


async def test_a_held_frontend_is_not_taken_over_by_a_forged_age() -> None:
    state, store = ClusterState(), SnapshotStore()
    task = asyncio.create_task(Publisher(state, store, FILES, debounce=0).run())
    holder = service("holder", ips=["192.0.2.10"], created="2024-05-01T00:00:00Z")
    forged = service("forged", "other", ips=["192.0.2.10"], created="1970-01-01T00:00:00Z")
    try:
        async with asyncio.timeout(10):
            state.replace(ALL_KINDS, [holder, endpoint_slice("holder-1", "holder", ["10.0.0.1"])])
            assert await store.wait_published() == 1
            # The newcomer arrives with a change of the holder's backends: a new version.
            state.replace(
                ALL_KINDS,
                [holder, forged, endpoint_slice("holder-1", "holder", ["10.0.0.1", "10.0.0.2"])],
            )
            assert await store.wait_newer(1) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (svc,) = store.cluster().services
    assert (svc.id, svc.service, len(svc.backends)) == ("192.0.2.10:80/TCP", "default/holder", 2)
    # Without a version that gave it to anyone (a fresh start), age decides, as before.
    fresh = run([holder, forged])
    assert [s.service for s in fresh.cluster.services] == ["other/forged"]


def no_control_characters(text: str) -> bool:
    return all(c.isprintable() for line in text.split("\n") for c in line)


def test_weirctl_never_prints_control_characters() -> None:
    evil = "x\x1b[2J\x1b[31mred\nFAKE LINE\r\x07\x9b"
    errors = pb.ListErrorsResponse(errors=[pb.ObjectError(kind="File", name=evil, message=evil)])
    text = format_errors(errors)
    assert no_control_characters(text) and len(text.split("\n")) == 2
    assert "x\\x1b[2J\\x1b[31mred\\nFAKE LINE\\r\\x07\\x9b" in text
    agents = pb.ListAgentsResponse(
        agents=[
            pb.AgentInfo(
                node=evil,
                agent_version=evil,
                peer=evil,
                error=evil,
                service_errors=[pb.ServiceError(service_id=evil, message=evil)],
            )
        ]
    )
    text = format_agents(agents, now=0)
    assert no_control_characters(text) and len(text.split("\n")) == 8
    snap = pb.Snapshot(
        node=evil,
        hash=evil,
        services=[pb.Service(id=evil, service=evil, port_name=evil, backends=[pb.Backend()])],
        bgp=pb.BGPConfig(local_asn=1, router_id=evil, peers=[pb.BGPPeer(name=evil)]),
    )
    text = format_node_snapshot(snap, backends=True)
    assert no_control_characters(text) and not any(line == "FAKE LINE" for line in text.split())
