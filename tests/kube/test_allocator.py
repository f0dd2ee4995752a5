"""The allocator against the fake API server with the real client: addresses, requested
addresses, sharing, conflicts, exhaustion, restarts, releases, write conflicts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from weir.controller.core.state import ClusterState
from weir.controller.kube.allocator import WATCHED_KINDS, Allocator
from weir.controller.kube.api import KubeAPI
from weir.controller.kube.poolstatus import ADDRESSES_KEPT, DELETION_BLOCKED, FINALIZER
from weir.controller.kube.wiring import STATE_KINDS
from weir.controller.sources.kubernetes import KubernetesSource

from . import builders as b
from .conftest import NAMESPACE, client_of
from .fakeapi import FakeKubeAPI
from .harness import Harness, condition, events, ingress

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def ctl(kube: KubeAPI, fake: FakeKubeAPI) -> AsyncIterator[Harness]:
    fake.create(b.pool("main", "192.0.2.0/30"))
    h = Harness(kube)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


def pool_status(fake: FakeKubeAPI, name: str) -> dict:
    return (fake.get("weir.dev/v1alpha1", "LoadBalancerIPPool", "", name) or {}).get("status", {})


async def test_allocates_and_reports(ctl: Harness, fake: FakeKubeAPI) -> None:
    fake.create(b.service("a"))
    fake.create(b.service("b"))
    await fake.wait_until(
        lambda: (
            events(fake, "a")
            and events(fake, "b")
            and pool_status(fake, "main").get("assigned") == 2
        )
    )
    assert (ingress(fake, "a"), ingress(fake, "b")) == (["192.0.2.0"], ["192.0.2.1"])
    svc = fake.get("v1", "Service", "default", "a")
    assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.0", "ipMode": "VIP"}]
    cond = condition(fake, "a")
    assert cond["status"] == "True" and cond["reason"] == "IPAllocated"
    assert "generation" not in svc["metadata"] and "observedGeneration" not in cond
    assert events(fake, "a") == [("Normal", "IPAllocated", "Assigned 192.0.2.0 from pool main")]
    assert pool_status(fake, "main") == {
        "assigned": 2,
        "assignedIPv4": 2,
        "assignedIPv6": 0,
        "availableIPv4": 2,
        "availableIPv6": 0,
        "services": 2,
        "observedGeneration": 1,
    }


async def test_requested_and_classes(kube: KubeAPI, fake: FakeKubeAPI) -> None:
    fake.create(b.pool("main", "192.0.2.0/30"))
    fake.create(b.service("ann", annotations={"weir.dev/load-balancer-ips": "192.0.2.3"}))
    fake.create(b.service("legacy", loadBalancerIP="192.0.2.2"))
    fake.create(b.service("classless", cls=None))
    fake.create(b.service("foreign", cls="example.com/other"))
    h = Harness(kube, default_class=True)
    await h.start()
    try:
        await fake.wait_until(
            lambda: ingress(fake, "ann") and ingress(fake, "legacy") and ingress(fake, "classless")
        )
    finally:
        await h.stop()
    assert ingress(fake, "ann") == ["192.0.2.3"] and ingress(fake, "legacy") == ["192.0.2.2"]
    assert ingress(fake, "classless") == ["192.0.2.0"]
    assert ingress(fake, "foreign") == [] and condition(fake, "foreign") is None


async def test_sharing_and_conflict(ctl: Harness, fake: FakeKubeAPI) -> None:
    key = {"weir.dev/sharing-key": "dns", "weir.dev/load-balancer-ips": "192.0.2.2"}
    fake.create(b.service("dns-tcp", ports=[(53, "TCP")], annotations=key))
    fake.create(b.service("dns-udp", ports=[(53, "UDP")], annotations=key))
    fake.create(
        b.service(
            "intruder", ports=[(53, "UDP")], annotations={"weir.dev/load-balancer-ips": "192.0.2.2"}
        )
    )
    await fake.wait_until(lambda: events(fake, "intruder") and ingress(fake, "dns-udp"))
    assert ingress(fake, "dns-tcp") == ingress(fake, "dns-udp") == ["192.0.2.2"]
    cond = condition(fake, "intruder")
    assert (cond["status"], cond["reason"]) == ("False", "IPConflict")
    assert "default/dns-tcp" in cond["message"]
    assert ingress(fake, "intruder") == []
    (ev,) = events(fake, "intruder")
    assert ev[:2] == ("Warning", "AllocationFailed") and "IPConflict" in ev[2]


async def test_exhaustion_then_recovery(ctl: Harness, fake: FakeKubeAPI) -> None:
    for name in ("s1", "s2", "s3", "s4", "s5"):
        fake.create(b.service(name))
    await fake.wait_until(
        lambda: condition(fake, "s5") is not None and len(events(fake, "s5")) == 1
    )
    assert [len(ingress(fake, n)) for n in ("s1", "s2", "s3", "s4", "s5")] == [1, 1, 1, 1, 0]
    cond = condition(fake, "s5")
    assert (cond["status"], cond["reason"]) == ("False", "PoolExhausted")
    assert events(fake, "s5")[0][:2] == ("Warning", "AllocationFailed")
    # Still alive and still allocating: a freed address goes to the waiting Service.
    freed = ingress(fake, "s2")
    fake.delete("v1", "Service", "default", "s2")
    await fake.wait_until(lambda: ingress(fake, "s5") == freed)
    await fake.wait_until(lambda: len(events(fake, "s5")) == 2)
    assert [e[1] for e in events(fake, "s5")] == ["AllocationFailed", "IPAllocated"]
    assert pool_status(fake, "main")["availableIPv4"] == 0


async def test_no_pool_matches(ctl: Harness, fake: FakeKubeAPI) -> None:
    fake.create(
        b.pool(
            "teams",
            "198.51.100.0/30",
            autoAssign=True,
            namespaceSelector={"matchLabels": {"team": "a"}},
        )
    )
    fake.patch(
        "weir.dev/v1alpha1",
        "LoadBalancerIPPool",
        "",
        "main",
        {"spec": {"serviceSelector": {"matchLabels": {"tier": "edge"}}}},
    )
    fake.create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"team": "a"}},
        }
    )
    fake.create(b.service("lonely"))
    fake.create(b.service("member", "team-a"))
    await fake.wait_until(
        lambda: condition(fake, "lonely") is not None and ingress(fake, "member", "team-a")
    )
    assert condition(fake, "lonely")["reason"] == "NoPoolMatches"
    assert ingress(fake, "member", "team-a") == ["198.51.100.0"]


async def test_restart_rebuilds_allocations(ctl: Harness, fake: FakeKubeAPI) -> None:
    for name in ("x", "y", "z"):
        fake.create(b.service(name))
    await fake.wait_until(lambda: all(ingress(fake, n) for n in "xyz"))
    before = {n: ingress(fake, n) for n in "xyz"}
    await ctl.stop()
    fake.create(b.service("w"))  # arrives while no controller runs
    mark = len(fake.records)
    await ctl.start()
    await fake.wait_until(lambda: bool(ingress(fake, "w")))
    assert {n: ingress(fake, n) for n in "xyz"} == before
    assert ingress(fake, "w") == ["192.0.2.3"]
    patched = {
        r.name for r in fake.records[mark:] if r.verb == "patch" and r.resource == "services"
    }
    assert patched == {"w"}  # nothing else was rewritten


async def test_release_when_no_longer_handled(ctl: Harness, fake: FakeKubeAPI) -> None:
    fake.create(b.service("gone"))
    await fake.wait_until(lambda: bool(ingress(fake, "gone")))
    svc = fake.get("v1", "Service", "default", "gone")
    svc["spec"]["type"] = "ClusterIP"
    del svc["spec"]["loadBalancerClass"]
    fake.update(svc)
    await fake.wait_until(lambda: condition(fake, "gone") is None)
    assert ingress(fake, "gone") == []


async def test_write_conflicts_are_retried(ctl: Harness, fake: FakeKubeAPI) -> None:
    fake.fail_requests(409, 2, verb="patch", resource="services")
    fake.fail_requests(503, 1, verb="patch", resource="loadbalancerippools")
    fake.create(b.service("busy"))
    await fake.wait_until(
        lambda: bool(ingress(fake, "busy")) and pool_status(fake, "main").get("assigned") == 1
    )
    codes = [r.code for r in fake.calls(verb="patch", resource="services", name="busy")]
    assert codes[:3] == [409, 409, 200]


async def test_dual_stack_and_pool_changes(ctl: Harness, fake: FakeKubeAPI) -> None:
    fake.create(b.pool("v6", "2001:db8::/120"))
    fake.create(b.service("both", ipFamilies=["IPv6", "IPv4"], ipFamilyPolicy="RequireDualStack"))
    # The pool's status is written after the Service's: wait for both.
    await fake.wait_until(
        lambda: bool(ingress(fake, "both")) and "assignedIPv6" in pool_status(fake, "v6")
    )
    assert ingress(fake, "both") == ["2001:db8::", "192.0.2.0"]
    assert pool_status(fake, "v6")["assignedIPv6"] == 1
    assert pool_status(fake, "v6")["availableIPv6"] == 255
    # A spec change of a pool moves its generation; the status follows.
    fake.patch(
        "weir.dev/v1alpha1", "LoadBalancerIPPool", "", "main", {"spec": {"cidrs": ["192.0.2.0/29"]}}
    )
    await fake.wait_until(lambda: pool_status(fake, "main").get("observedGeneration") == 2)
    assert pool_status(fake, "main")["availableIPv4"] == 7
    assert ingress(fake, "both") == ["2001:db8::", "192.0.2.0"]  # nothing moved


async def test_bad_pool_does_not_stop_the_others(ctl: Harness, fake: FakeKubeAPI) -> None:
    # Valid for the CRD schema, not for Weir: start after end.
    fake.create(b.pool("broken", ranges=[("198.51.100.9", "198.51.100.1")]))
    fake.create(b.service("fine"))
    await fake.wait_until(lambda: bool(ingress(fake, "fine")))
    errors = [(e.kind, e.name) for e in ctl.state.errors()]
    assert ("LoadBalancerIPPool", "broken") in errors
    assert pool_status(fake, "broken") == {}


async def test_addresses_of_unreadable_services_stay_held(ctl: Harness, fake: FakeKubeAPI) -> None:
    fake.create(b.service("first"))
    await fake.wait_until(lambda: ingress(fake, "first") == ["192.0.2.0"])
    # A Service the state cannot parse (the API server would refuse this affinity; the state
    # must not rely on that) still holds the address in its status.
    odd = b.service("odd", sessionAffinity="Sometimes")
    odd["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    ctl.state.upsert(odd)
    assert ("Service", "odd") in [(e.kind, e.name) for e in ctl.state.errors()]
    fake.create(b.service("second"))
    await fake.wait_until(lambda: bool(ingress(fake, "second")))
    assert ingress(fake, "second") == ["192.0.2.2"]


def pool_of(fake: FakeKubeAPI, name: str) -> dict:
    return fake.get("weir.dev/v1alpha1", "LoadBalancerIPPool", "", name) or {}


def pool_conditions(fake: FakeKubeAPI, name: str) -> dict[str, dict]:
    return {c["type"]: c for c in pool_status(fake, name).get("conditions") or ()}


def pool_events(fake: FakeKubeAPI, name: str) -> list[tuple[str, str]]:
    return [
        (e["type"], e["reason"])
        for e in fake.list("v1", "Event", "default")
        if e["involvedObject"]["kind"] == "LoadBalancerIPPool"
        and e["involvedObject"]["name"] == name
    ]


async def held_from_main(fake: FakeKubeAPI, name: str) -> None:
    """Create a Service and wait until it holds the first address of "main", which then
    carries the allocator's finalizer."""
    fake.create(b.service(name))
    await fake.wait_until(
        lambda: (
            ingress(fake, name) == ["192.0.2.0"]
            and FINALIZER in pool_of(fake, "main")["metadata"].get("finalizers", [])
        )
    )


async def test_a_pool_in_use_is_deleted_only_once_unused(ctl: Harness, fake: FakeKubeAPI) -> None:
    await held_from_main(fake, "web")
    fake.delete("weir.dev/v1alpha1", "LoadBalancerIPPool", "", "main")
    await fake.wait_until(lambda: DELETION_BLOCKED in pool_conditions(fake, "main"))
    blocked = pool_conditions(fake, "main")[DELETION_BLOCKED]
    assert (blocked["status"], blocked["reason"]) == ("True", "InUse")
    assert "default/web" in blocked["message"]
    await fake.wait_until(lambda: ("Warning", "DeletionBlocked") in pool_events(fake, "main"))
    # The holder keeps its address; a newcomer gets none from a pool being deleted.
    fake.create(b.service("late"))
    await fake.wait_until(lambda: condition(fake, "late") is not None)
    assert condition(fake, "late")["reason"] == "NoPoolMatches"
    assert ingress(fake, "web") == ["192.0.2.0"] and condition(fake, "web")["status"] == "True"
    assert pool_of(fake, "main")  # still there
    # Once no Service holds its addresses, the finalizer goes, and the pool with it.
    fake.delete("v1", "Service", "default", "web")
    await fake.wait_until(lambda: not pool_of(fake, "main"))


async def test_a_crd_reinstall_takes_no_address(ctl: Harness, fake: FakeKubeAPI) -> None:
    await held_from_main(fake, "web")
    crd = "loadbalancerippools.weir.dev"
    fake.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", crd)
    await fake.wait_until(lambda: DELETION_BLOCKED in pool_conditions(fake, "main"))
    assert fake.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", crd)  # held
    assert ingress(fake, "web") == ["192.0.2.0"] and condition(fake, "web")["status"] == "True"


async def test_pool_edits_renumber_nobody_and_are_reported(ctl: Harness, fake: FakeKubeAPI) -> None:
    for name in ("a", "b", "c"):
        fake.create(b.service(name))
    await fake.wait_until(lambda: pool_status(fake, "main").get("assigned") == 3)
    assert [ingress(fake, n) for n in "abc"] == [["192.0.2.0"], ["192.0.2.1"], ["192.0.2.2"]]
    # Shrink the pool to .0-.1 and leave out .0 as well.
    edit = {"spec": {"cidrs": ["192.0.2.0/31"], "avoidBuggyIPs": True}}
    fake.patch("weir.dev/v1alpha1", "LoadBalancerIPPool", "", "main", edit)
    await fake.wait_until(lambda: ADDRESSES_KEPT in pool_conditions(fake, "main"))
    kept = pool_conditions(fake, "main")[ADDRESSES_KEPT]
    assert (kept["status"], kept["reason"]) == ("True", "OutsideSpec")
    assert kept["observedGeneration"] == 2
    assert kept["message"] == (
        "Services keep addresses this pool no longer offers: "
        "192.0.2.0 (default/a): left out by the pool's avoidBuggyIPs; "
        "192.0.2.2 (default/c): not in the pool's cidrs or ranges"
    )
    await fake.wait_until(lambda: ("Warning", "AddressesKept") in pool_events(fake, "main"))
    assert [ingress(fake, n) for n in "abc"] == [["192.0.2.0"], ["192.0.2.1"], ["192.0.2.2"]]
    assert all(condition(fake, n)["status"] == "True" for n in "abc")
    # Once the Services let go, the pool's condition goes too.
    fake.delete("v1", "Service", "default", "a")
    fake.delete("v1", "Service", "default", "c")
    await fake.wait_until(lambda: not pool_conditions(fake, "main"))


async def test_a_server_without_ip_mode_gets_each_status_written_once(
    oldest_fake: FakeKubeAPI, tmp_path: Path
) -> None:
    fake = oldest_fake
    fake.create(b.pool("main", "192.0.2.0/30"))
    fake.create(b.service("a"))
    fake.create(b.service("b"))
    state = ClusterState(STATE_KINDS)
    async with client_of(fake.write_kubeconfig(tmp_path / "kubeconfig")) as api_client:
        kube = KubeAPI(api_client, request_timeout=5.0)
        source = asyncio.create_task(KubernetesSource(kube, NAMESPACE).run(state))
        try:
            async with asyncio.timeout(10):
                while not WATCHED_KINDS <= state.listed_kinds:
                    await state.wait_changed(state.generation)
            allocator = Allocator(kube, state)
            # Rounds by hand: each write's answer goes into the state before round() returns.
            assert await allocator.round()
            assert await allocator.round()  # nothing changed since: nothing to write
        finally:
            source.cancel()
            await asyncio.gather(source, return_exceptions=True)
    writes = fake.calls(verb="patch", resource="services", subresource="status")
    assert sorted(w.name for w in writes) == ["a", "b"]
    svc = fake.get("v1", "Service", "default", "a")
    assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.0"}]  # no ipMode here
