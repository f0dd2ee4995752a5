"""IPAM when pools change under Services that hold addresses: nobody is renumbered and no
address vanishes; what an edit would have taken is reported on the pool."""

from __future__ import annotations

from typing import Any

from weir.controller.core.crds import IPPool, parse_ip_pool
from weir.controller.core.objects import Service, parse_service
from weir.controller.kube.ipam import ALLOCATED, CONDITION, NO_POOL, IPAMResult, allocate

from . import builders as b
from .test_ipam import ips, reasons


def pool(name: str, *cidrs: str, deleting: bool = False, **spec: Any) -> IPPool:
    obj = b.pool(name, *cidrs, **spec)
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2024-06-01T00:00:00Z"
    return parse_ip_pool(obj)


def given(result: IPAMResult, *names: str, ns: str = "default") -> list[Service]:
    """The Services as the allocator leaves them after result: ingress and condition."""
    out = []
    for age, name in enumerate(names):
        obj = b.service(name, ns)
        obj["metadata"]["creationTimestamp"] = f"2024-01-01T00:00:{age:02d}Z"
        alloc = result.allocations[(ns, name)]
        obj["status"] = {
            "loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in alloc.ips]},
            "conditions": [
                {
                    "type": CONDITION,
                    "status": "True" if alloc.ok else "False",
                    "reason": alloc.reason,
                    "message": alloc.message,
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                }
            ],
        }
        out.append(parse_service(obj))
    return out


def first_round(pools: list[IPPool], *names: str, ns: str = "default") -> list[Service]:
    """names (in name order, having no creationTimestamp) allocated from pools, as written."""
    return given(allocate([parse_service(b.service(n, ns)) for n in names], pools), *names, ns=ns)


def test_shrinking_a_pool_renumbers_nobody() -> None:
    names = [f"s{i}" for i in range(8)]
    held = first_round([pool("p", "192.0.2.0/29")], *names)
    assert [s.ingress_ips for s in held] == [(f"192.0.2.{i}",) for i in range(8)]
    newcomer = parse_service(b.service("late"))
    result = allocate([*held, newcomer], [pool("p", "192.0.2.0/30")])
    assert ips(result) == {**{n: (f"192.0.2.{i}",) for i, n in enumerate(names)}, "late": ()}
    assert {n for n, r in reasons(result).items() if r == ALLOCATED} == set(names)
    assert result.allocations[("default", "s5")].message == (
        "192.0.2.5 from pool p (kept: not in the pool's cidrs or ranges)"
    )
    assert result.kept["p"] == tuple(
        f"192.0.2.{i} (default/s{i}): not in the pool's cidrs or ranges" for i in range(4, 8)
    )
    assert result.holders["p"] == tuple(f"default/{n}" for n in names)
    # The record survives the next round: still kept, nothing moves.
    again = allocate(given(result, *names), [pool("p", "192.0.2.0/30")])
    assert ips(again) == {n: (f"192.0.2.{i}",) for i, n in enumerate(names)}


def test_avoid_buggy_ips_renumbers_nobody() -> None:
    held = first_round([pool("p", "192.0.2.0/30")], "first", "second")
    assert [s.ingress_ips for s in held] == [("192.0.2.0",), ("192.0.2.1",)]
    result = allocate(held, [pool("p", "192.0.2.0/30", avoidBuggyIPs=True)])
    assert ips(result) == {"first": ("192.0.2.0",), "second": ("192.0.2.1",)}
    assert result.kept["p"] == ("192.0.2.0 (default/first): left out by the pool's avoidBuggyIPs",)


def test_a_selector_edit_renumbers_nobody() -> None:
    held = first_round([pool("p", "192.0.2.0/30", namespaces=["team-a"])], "web", ns="team-a")
    result = allocate(held, [pool("p", "192.0.2.0/30", namespaces=["team-b"])])
    assert ips(result) == {"web": ("192.0.2.0",)}
    assert result.kept["p"] == (
        "192.0.2.0 (team-a/web): the pool's selectors no longer select the Service",
    )


def test_a_pool_being_deleted_keeps_its_holders_and_gives_no_more() -> None:
    held = first_round([pool("p", "192.0.2.0/30")], "web")
    newcomer = parse_service(b.service("late"))
    result = allocate([*held, newcomer], [pool("p", "192.0.2.0/30", deleting=True)])
    assert ips(result) == {"web": ("192.0.2.0",), "late": ()}
    assert reasons(result) == {"web": ALLOCATED, "late": NO_POOL}
    assert result.holders == {"p": ("default/web",)}
    assert "p" not in result.kept  # nothing outside its spec: only its deletion waits
    # Gone anyway (its finalizer removed by hand): the address stays, noted on the Service.
    gone = allocate(held, [])
    assert ips(gone) == {"web": ("192.0.2.0",)}
    assert gone.allocations[("default", "web")].message == (
        "192.0.2.0 from pool p (kept: its pool is gone)"
    )


def test_only_addresses_weir_gave_are_kept_outside_pools() -> None:
    # A status written by someone else, for an address in no pool: replaced, as before.
    stranger = b.service("stranger")
    stranger["status"] = {"loadBalancer": {"ingress": [{"ip": "10.9.9.9"}]}}
    result = allocate([parse_service(stranger)], [pool("p", "192.0.2.0/30")])
    assert ips(result) == {"stranger": ("192.0.2.0",)}
    # A record that names another address than the one held counts for nothing either.
    held = first_round([pool("p", "192.0.2.0/29")], "web")
    moved = b.service("web")
    moved["status"] = {
        "loadBalancer": {"ingress": [{"ip": "192.0.2.6"}]},
        "conditions": [dict(held[0].conditions[0])],
    }
    result = allocate([parse_service(moved)], [pool("p", "192.0.2.0/30")])
    assert ips(result) == {"web": ("192.0.2.0",)}
