"""IPAM rules (controller/kube/ipam.py): pure, so tested directly and with hypothesis."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from weir.controller.core.crds import IPPool, parse_ip_pool
from weir.controller.core.objects import Service, parse_service
from weir.controller.kube.ipam import (
    ALLOCATED,
    CONFLICT,
    EXHAUSTED,
    INT64_MAX,
    INVALID,
    NO_POOL,
    IPAMResult,
    allocate,
)

from . import builders as b


def typed_service(
    name: str, age: int = 0, *, ns: str = "default", ingress: tuple[str, ...] = (), **kw: Any
) -> Service:
    obj = b.service(name, ns, **kw)
    obj["metadata"]["creationTimestamp"] = f"2024-01-01T00:{age // 60:02d}:{age % 60:02d}Z"
    obj["metadata"]["uid"] = f"uid-{ns}-{name}"
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    return parse_service(obj)


def typed_pool(name: str, *cidrs: str, **kw: Any) -> IPPool:
    return parse_ip_pool(b.pool(name, *cidrs, **kw))


def ips(result: IPAMResult) -> dict[str, tuple[str, ...]]:
    return {name: a.ips for (_, name), a in result.allocations.items()}


def reasons(result: IPAMResult) -> dict[str, str]:
    return {name: a.reason for (_, name), a in result.allocations.items()}


def test_lowest_free_addresses_and_buggy_ips() -> None:
    pools = [typed_pool("p", "192.0.2.0/30")]
    result = allocate([typed_service("a", 1), typed_service("b", 2)], pools)
    assert ips(result) == {"a": ("192.0.2.0",), "b": ("192.0.2.1",)}
    buggy = [typed_pool("p", ranges=[("192.0.2.254", "192.0.3.1")], avoidBuggyIPs=True)]
    result = allocate([typed_service(n, i) for i, n in enumerate("abc")], buggy)
    assert ips(result) == {"a": ("192.0.2.254",), "b": ("192.0.3.1",), "c": ()}
    assert reasons(result)["c"] == EXHAUSTED
    assert result.pools["p"].available_v4 == 0 and result.pools["p"].assigned_v4 == 2


def test_only_weir_services() -> None:
    pools = [typed_pool("p", "192.0.2.0/29")]
    svcs = [
        typed_service("ours", 1),
        typed_service("other", 2, cls="example.com/lb"),
        typed_service("classless", 3, cls=None),
        typed_service(
            "annotated", 4, cls=None, annotations={"weir.dev/traffic-strategy": "maglev"}
        ),
        typed_service("clusterip", 5, type="ClusterIP", cls=None),
    ]
    assert set(ips(allocate(svcs, pools))) == {"ours"}
    assert set(ips(allocate(svcs, pools, default_class=True))) == {"ours", "classless", "annotated"}


def test_requested_addresses() -> None:
    pools = [
        typed_pool("auto", "192.0.2.0/29"),
        typed_pool("manual", "198.51.100.0/29", autoAssign=False),
    ]
    svcs = [
        typed_service("ann", 1, annotations={"weir.dev/load-balancer-ips": "198.51.100.5"}),
        typed_service("legacy", 2, loadBalancerIP="192.0.2.6"),
        typed_service("outside", 3, annotations={"weir.dev/load-balancer-ips": "203.0.113.1"}),
        typed_service("garbage", 4, annotations={"weir.dev/load-balancer-ips": "192.0.2.1,x"}),
        typed_service("auto", 5),
    ]
    result = allocate(svcs, pools)
    assert ips(result) == {
        "ann": ("198.51.100.5",),
        "legacy": ("192.0.2.6",),
        "outside": (),
        "garbage": (),
        "auto": ("192.0.2.0",),
    }
    assert reasons(result)["outside"] == NO_POOL
    assert reasons(result)["garbage"] == INVALID
    assert "203.0.113.1" in result.allocations[("default", "outside")].message


def test_sharing_keys() -> None:
    pools = [typed_pool("p", "192.0.2.0/29")]
    key = {"weir.dev/sharing-key": "dns"}
    svcs = [
        typed_service("tcp", 1, ports=[(53, "TCP")], annotations=key),
        typed_service("udp", 2, ports=[(53, "UDP")], annotations=key),
        typed_service("tcp2", 3, ports=[(53, "TCP")], annotations=key),  # overlaps "tcp"
        typed_service("nokey", 4, ports=[(54, "TCP")]),
    ]
    assert ips(allocate(svcs, pools)) == {
        "tcp": ("192.0.2.0",),
        "udp": ("192.0.2.0",),
        "tcp2": ("192.0.2.1",),
        "nokey": ("192.0.2.2",),
    }
    want = {"weir.dev/load-balancer-ips": "192.0.2.0"}
    svcs = [
        typed_service("first", 1, ports=[(80, "TCP")], annotations=want),
        typed_service("clash", 2, ports=[(81, "TCP")], annotations=want),  # no key
        typed_service("sharer", 3, ports=[(82, "TCP")], annotations={**want, **key}),
    ]
    result = allocate(svcs, pools)
    assert reasons(result) == {"first": ALLOCATED, "clash": CONFLICT, "sharer": CONFLICT}
    assert "default/first" in result.allocations[("default", "clash")].message


def test_holders_keep_their_addresses() -> None:
    pools = [typed_pool("p", "192.0.2.0/29")]
    svcs = [
        typed_service("young", 9, ingress=("192.0.2.5",)),
        typed_service("old", 1),
        typed_service("dup", 10, ingress=("192.0.2.5",)),
    ]
    result = allocate(svcs, pools)
    # "young" keeps what it holds although "old" is older; "dup" lost the clash.
    assert ips(result) == {"young": ("192.0.2.5",), "old": ("192.0.2.0",), "dup": ("192.0.2.1",)}
    # An address no pool offers any more is replaced.
    result = allocate([typed_service("moved", 1, ingress=("10.9.9.9",))], pools)
    assert ips(result) == {"moved": ("192.0.2.0",)}
    # A requested address wins over a held one.
    svc = typed_service(
        "asks", 1, ingress=("192.0.2.1",), annotations={"weir.dev/load-balancer-ips": "192.0.2.3"}
    )
    assert ips(allocate([svc], pools)) == {"asks": ("192.0.2.3",)}


def test_selectors() -> None:
    pools = [
        typed_pool("team", "192.0.2.0/30", namespaceSelector={"matchLabels": {"team": "a"}}),
        typed_pool("web", "198.51.100.0/30", serviceSelector={"matchLabels": {"app": "web"}}),
        typed_pool("named", "203.0.113.0/30", namespaces=["special"]),
    ]
    svcs = [
        typed_service("x", 1, ns="ns-a"),
        typed_service("y", 2, labels={"app": "web"}),
        typed_service("z", 3, ns="special"),
        typed_service("none", 4),
    ]
    result = allocate(svcs, pools, namespace_labels={"ns-a": {"team": "a"}})
    assert ips(result) == {
        "x": ("192.0.2.0",),
        "y": ("198.51.100.0",),
        "z": ("203.0.113.0",),
        "none": (),
    }
    assert reasons(result)["none"] == NO_POOL


def test_reserved_addresses_are_never_handed_out() -> None:
    pools = [typed_pool("p", "192.0.2.0/30")]
    svcs = [
        typed_service("mine", 1, ingress=("192.0.2.0",)),
        typed_service("new", 2),
        typed_service("asks", 3, annotations={"weir.dev/load-balancer-ips": "192.0.2.2"}),
    ]
    result = allocate(
        svcs, pools, reserved={"192.0.2.0": "other/svc", "192.0.2.1": "x/y", "192.0.2.2": "x/z"}
    )
    assert ips(result) == {"mine": ("192.0.2.3",), "new": (), "asks": ()}
    assert reasons(result) == {"mine": ALLOCATED, "new": EXHAUSTED, "asks": CONFLICT}
    assert result.pools["p"].assigned_v4 == 4 and result.pools["p"].available_v4 == 0


def test_ipv6_and_dual_stack() -> None:
    pools = [typed_pool("v4", "192.0.2.0/30"), typed_pool("v6", "2001:db8::/64")]
    svcs = [
        typed_service("single6", 1, ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack"),
        typed_service("dual", 2, ipFamilies=["IPv6", "IPv4"], ipFamilyPolicy="PreferDualStack"),
        typed_service("req", 3, ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"),
    ]
    result = allocate(svcs, pools)
    assert ips(result) == {
        "single6": ("2001:db8::",),
        "dual": ("2001:db8::1", "192.0.2.0"),
        "req": ("192.0.2.1", "2001:db8::2"),
    }
    usage = result.pools["v6"]
    assert usage.assigned_v6 == 3 and usage.available_v6 == INT64_MAX
    only4 = allocate(svcs, pools[:1])
    assert reasons(only4) == {"single6": NO_POOL, "dual": ALLOCATED, "req": NO_POOL}


# --- properties ---------------------------------------------------------------------------------

service_specs = st.lists(
    st.tuples(
        st.lists(
            st.tuples(st.sampled_from([53, 80, 443]), st.sampled_from(["TCP", "UDP"])),
            min_size=1,
            max_size=2,
            unique=True,
        ),
        st.sampled_from([None, "k1", "k2"]),
        st.sampled_from([None, "192.0.2.1", "192.0.2.2", "192.0.2.9"]),
        st.sampled_from([(), ("192.0.2.1",), ("192.0.2.3",), ("192.0.2.200",)]),
    ),
    max_size=12,
)


def build(specs: list, held: dict[str, tuple[str, ...]] | None = None) -> list[Service]:
    out = []
    for i, (ports, key, want, ingress) in enumerate(specs):
        ann = {}
        if key:
            ann["weir.dev/sharing-key"] = key
        if want:
            ann["weir.dev/load-balancer-ips"] = want
        if held is not None:
            ingress = held[f"s{i}"]
        out.append(typed_service(f"s{i}", i % 7, ports=ports, annotations=ann, ingress=ingress))
    return out


POOLS = [typed_pool("a", "192.0.2.0/30"), typed_pool("b", ranges=[("192.0.2.8", "192.0.2.9")])]


@settings(max_examples=150, deadline=None)
@given(service_specs, st.randoms(use_true_random=False))
def test_invariants(specs: list, rnd: random.Random) -> None:
    svcs = build(specs)
    result = allocate(svcs, POOLS)
    by_key = {s.key: s for s in svcs}
    holders: dict[str, list[Service]] = {}
    for key, alloc in result.allocations.items():
        for ip in alloc.ips:
            assert any(p.contains(ip) for p in POOLS)
            holders.setdefault(ip, []).append(by_key[key])
        if by_key[key].requested_ips and alloc.ok:
            assert set(alloc.ips) == set(by_key[key].requested_ips)
    for ip, group in holders.items():  # never two Services on one address unless they share
        for i, x in enumerate(group):
            for y in group[i + 1 :]:
                assert x.sharing_key and x.sharing_key == y.sharing_key, ip
                assert not {(p.port, p.protocol) for p in x.ports} & {
                    (p.port, p.protocol) for p in y.ports
                }
    shuffled = list(svcs)
    rnd.shuffle(shuffled)
    assert allocate(shuffled, list(reversed(POOLS))) == result  # order of input is no input
    # Written back as status (what a restarted leader reads), nothing moves.
    assert ips(allocate(build(specs, held=ips(result)), POOLS)) == ips(result)
