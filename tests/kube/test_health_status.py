"""The health checks' Kubernetes side (docs/HEALTH.md): the leader's Events and the
weir.dev/BackendsHealthy condition on a checked Service, against the fake API server with the
real client. LB agents' reports go into the real HealthTracker; the source, the allocator,
the publisher (reduce) and the writer run as weir-controller wires them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from weir.common.pb import pb
from weir.controller.core.publish import Publisher
from weir.controller.core.reduce import ReduceConfig
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.kube.api import SERVICES, KubeAPI
from weir.controller.kube.events import EventRecorder
from weir.controller.kube.healthstatus import CONDITION, HealthStatusWriter
from weir.controller.metrics import Metrics
from weir.controller.plane.health import HealthTracker

from . import builders as b
from .fakeapi import FakeKubeAPI
from .harness import Harness, condition, events, ingress

pytestmark = pytest.mark.timeout(60)

CHECKED = {"weir.dev/health-check": "tcp", "weir.dev/health-check-interval": "500ms"}
ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
FID = "192.0.2.0:80/TCP"
BURST = 10


class Stack:
    """Source, allocator, publisher, tracker and writer for one fake API server."""

    def __init__(self, kube: KubeAPI) -> None:
        self.harness = Harness(kube)
        self.kube = kube

    async def start(self) -> None:
        await self.harness.start()
        state = self.harness.state
        self.store = SnapshotStore()
        self.tracker = HealthTracker(state, self.store, Metrics())
        # A spam filter that refills slower than any test runs: what it lets through is fixed.
        recorder = EventRecorder(self.kube, "test", burst=BURST, refill=3600)
        self.writer = HealthStatusWriter(self.kube, state, self.tracker, recorder, retry=0.2)
        config = ReduceConfig(maglev_seed=7, vips_from_annotation=False)
        publisher = Publisher(state, self.store, config, debounce=0)
        self.harness.tasks += [  # stopped with the harness's
            asyncio.create_task(publisher.run()),
            asyncio.create_task(self.writer.run()),
        ]

    def report(self, failing: dict[str, list[str]]) -> None:
        """Three LB nodes' NodeStatus: each checks FID and sees these backends failing."""
        self.tracker.update(
            (
                node,
                pb.NodeStatus(
                    health_checked=[FID],
                    health_failing=[
                        pb.BackendHealth(
                            service_id=FID, address=a, port=8080, since_unix=1, reason="refused"
                        )
                        for a in failing.get(node, [])
                    ],
                ),
            )
            for node in ("lb1", "lb2", "lb3")
        )

    async def stop(self) -> None:
        await self.harness.stop()


@pytest.fixture
async def stack(kube: KubeAPI, fake: FakeKubeAPI) -> AsyncIterator[Stack]:
    fake.create(b.pool("main", "192.0.2.0/30"))
    fake.create(b.service("web", annotations=CHECKED))
    fake.create(b.endpoint_slice("web", "default", ADDRS))
    s = Stack(kube)
    await s.start()
    try:
        await fake.wait_until(lambda: ingress(fake, "web") == ["192.0.2.0"])
        await s.store.wait_published()
        yield s
    finally:
        await s.stop()


def health(fake: FakeKubeAPI, name: str = "web") -> dict[str, Any] | None:
    return condition(fake, name, ctype=CONDITION)


def reasons(fake: FakeKubeAPI) -> list[str]:
    return [r for _, r, _ in events(fake, "web") if r != "IPAllocated"]


def status_patches(fake: FakeKubeAPI) -> int:
    return len(fake.calls(verb="patch", resource="services"))


async def test_out_and_back_make_events_and_the_condition(stack: Stack, fake: FakeKubeAPI) -> None:
    await fake.wait_until(lambda: (health(fake) or {}).get("status") == "True")
    assert health(fake)["reason"] == "BackendsHealthy"  # type: ignore[index]
    # One node of three sees 10.0.0.2 failing: a minority, nothing changes.
    stack.report({"lb1": ["10.0.0.2"]})
    stack.report({"lb1": ["10.0.0.2"], "lb2": ["10.0.0.2"]})
    await fake.wait_until(lambda: (health(fake) or {}).get("status") == "False")
    cond = health(fake)
    assert cond is not None
    assert (cond["reason"], cond["message"]) == ("BackendsUnhealthy", "held out: 10.0.0.2:8080")
    await fake.wait_until(lambda: reasons(fake) == ["BackendUnhealthy"])
    ((kind, _, message),) = [e for e in events(fake, "web") if e[1] == "BackendUnhealthy"]
    assert kind == "Warning"
    assert message == (
        f"backend 10.0.0.2:8080 of {FID} fails its health check on 2 of 3 checking nodes: "
        "lb1 (refused), lb2 (refused); held out"
    )
    # The allocator's condition is kept beside ours.
    svc = fake.get("v1", "Service", "default", "web") or {}
    types = sorted(c["type"] for c in svc["status"]["conditions"])
    assert types == ["weir.dev/BackendsHealthy", "weir.dev/IPAllocated"]

    stack.report({})
    await fake.wait_until(lambda: (health(fake) or {}).get("status") == "True")
    await fake.wait_until(lambda: reasons(fake) == ["BackendUnhealthy", "BackendHealthy"])
    assert ("Normal", "BackendHealthy") in [(k, r) for k, r, _ in events(fake, "web")]


async def test_every_backend_failing_fails_open(stack: Stack, fake: FakeKubeAPI) -> None:
    all_fail = {node: ADDRS for node in ("lb1", "lb2", "lb3")}
    stack.report(all_fail)
    await fake.wait_until(lambda: (health(fake) or {}).get("reason") == "FailOpen")
    assert health(fake)["status"] == "False"  # type: ignore[index]
    assert f"every backend of {FID} fails" in health(fake)["message"]  # type: ignore[index]
    await fake.wait_until(lambda: "FailOpen" in reasons(fake))
    assert reasons(fake).count("BackendUnhealthy") == 3
    told = [m for _, r, m in events(fake, "web") if r == "BackendUnhealthy"]
    assert all(m.endswith("; kept: fail open") for m in told)
    stack.report({})
    await fake.wait_until(lambda: "FailOpenEnded" in reasons(fake))
    await fake.wait_until(lambda: (health(fake) or {}).get("status") == "True")


async def test_a_flapping_backend_writes_bounded_events_and_conditions(
    stack: Stack, fake: FakeKubeAPI
) -> None:
    await fake.wait_until(lambda: (health(fake) or {}).get("status") == "True")
    before = status_patches(fake)
    for _ in range(20):  # each flap waits for the writer to have seen it
        stack.report({"lb1": ["10.0.0.1"], "lb2": ["10.0.0.1"]})
        await fake.wait_until(lambda: (health(fake) or {}).get("status") == "False")
        stack.report({})
        await fake.wait_until(lambda: (health(fake) or {}).get("status") == "True")
    # 40 transitions: the condition follows each (one write each, at most a conflict's
    # retry more), the Events stop at the spam filter's burst.
    assert 40 <= status_patches(fake) - before <= 44
    await asyncio.sleep(0.3)  # the writer has nothing more to say: nothing more comes
    assert len(reasons(fake)) == BURST
    # Reports that change nothing write nothing.
    settled = status_patches(fake)
    for _ in range(5):
        stack.report({"lb1": ["10.0.0.3"]})  # a minority
        stack.report({})
    await asyncio.sleep(0.3)
    assert status_patches(fake) == settled


async def test_the_condition_goes_when_the_check_does(stack: Stack, fake: FakeKubeAPI) -> None:
    await fake.wait_until(lambda: health(fake) is not None)
    svc = fake.get("v1", "Service", "default", "web") or {}
    svc["metadata"]["annotations"] = {}
    fake.update(svc)
    await fake.wait_until(lambda: health(fake) is None)
    conds = (fake.get("v1", "Service", "default", "web") or {})["status"]["conditions"]
    assert [c["type"] for c in conds] == ["weir.dev/IPAllocated"]


async def test_the_spam_filter_refills_and_says_what_it_dropped(
    kube: KubeAPI, fake: FakeKubeAPI
) -> None:
    now = [0.0]
    recorder = EventRecorder(kube, "test", burst=2, refill=10, clock=lambda: now[0])
    web = {"metadata": {"name": "web", "namespace": "default", "uid": "u1"}}
    told = [await recorder.record(SERVICES, web, "Normal", "R", f"m{i}") for i in range(4)]
    assert told == [True, True, False, False]
    now[0] = 10.0  # one event's worth
    assert await recorder.record(SERVICES, web, "Normal", "R", "m4")
    assert not await recorder.record(SERVICES, web, "Normal", "R", "m5")
    other = {"metadata": {"name": "other", "namespace": "default"}}
    assert await recorder.record(SERVICES, other, "Normal", "R", "x")  # a bucket per object
    assert [m for _, _, m in events(fake, "web")] == [
        "m0",
        "m1",
        "m4 (2 earlier events about this object not recorded)",
    ]
