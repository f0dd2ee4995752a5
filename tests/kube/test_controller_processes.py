"""weir-controller processes against the fake API server: a 410 relist makes no new snapshot
version; two replicas with leader election survive a SIGKILL of the leader with no address
change, and agents connected to the survivor converge; only the leader keeps the
BGPAdvertisement condition, and a new leader rewrites none that is right."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import builders as b
from .conftest import NAMESPACE
from .fakeapi import FakeKubeAPI
from .harness import accepted, advertisement_writes, ingress
from .procs import Agent, ControllerProc, free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

LEASE = {"duration": 4.0, "renew": 3.0, "retry": 0.5}
AD_WRITER = "BGPAdvertisement status writer running"  # logged as the leader starts it


def lease_args() -> list[str]:
    return [
        "--leader-elect",
        "--lease-duration",
        str(LEASE["duration"]),
        "--renew-deadline",
        str(LEASE["renew"]),
        "--retry-period",
        str(LEASE["retry"]),
    ]


def holder(fake: FakeKubeAPI) -> str:
    lease = fake.get("coordination.k8s.io/v1", "Lease", NAMESPACE, "weir-controller")
    return (lease or {}).get("spec", {}).get("holderIdentity") or ""


@pytest.fixture
async def cluster(fake: FakeKubeAPI) -> AsyncIterator[FakeKubeAPI]:
    fake.create(b.pool("main", "192.0.2.0/28"))
    # The agents' nodes are load-balancer nodes: their views carry the services.
    fake.create(b.node("node-a", "10.0.0.1", b.LB_NODE))
    fake.create(b.node("node-b", "10.0.0.2", b.LB_NODE))
    fake.create(b.service("web"))
    fake.create(b.endpoint_slice("web", "default", ["10.1.0.1", "10.1.0.2"]))
    yield fake


@pytest.fixture
async def procs(cluster: FakeKubeAPI, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[list]:
    started: list[ControllerProc] = []
    yield started
    for p in started:
        await p.close()


async def test_relists_and_outages_make_no_new_version(
    cluster: FakeKubeAPI, kubeconfig: Path, tmp_path: Path, procs: list[ControllerProc]
) -> None:
    fake = cluster
    health = free_port()
    ctl = ControllerProc(
        kubeconfig, tmp_path, "solo", "--debounce-ms", "0", "--health-listen", f"127.0.0.1:{health}"
    )
    procs.append(ctl)
    await ctl.start()
    agent = Agent(ctl.target, "node-a")
    agent.start()
    try:
        await agent.until(lambda a: len(a.vips()) == 1)
        assert await health_status(health, "") == "SERVING"
        assert await health_status(health, "liveness") == "SERVING"
        before = (await ctl.snapshot()).version
        lists = len(fake.calls(verb="list"))
        writes = len([r for r in fake.records if r.verb in ("patch", "update", "create")])
        fake.compact()
        fake.expire_watches()  # every watch gets ERROR 410: every kind is relisted
        await fake.wait_until(
            lambda: len(fake.calls(verb="list")) >= lists + 8 and fake.watch_count() == 8, within=20
        )
        # The API goes away for a while: the last good state keeps being served.
        fake.set_down(True)
        await fake.wait_until(lambda: fake.refused >= 8, within=20)
        assert (await ctl.snapshot()).version == before
        assert agent.client.connected and len(agent.vips()) == 1
        fake.set_down(False)
        await fake.wait_until(lambda: fake.watch_count() == 8, within=20)
        # A real change now must be the very next version: neither the relist nor the
        # outage made one.
        slice_ = fake.get("discovery.k8s.io/v1", "EndpointSlice", "default", "web-abc")
        slice_["endpoints"].append({"addresses": ["10.1.0.3"], "conditions": {"ready": True}})
        fake.update(slice_)
        await agent.until(lambda a: any(len(s.backends) == 3 for s in a.view.services.values()))
        assert (await ctl.snapshot()).version == before + 1
        assert agent.versions[-1] == before + 1
        assert len([r for r in fake.records if r.verb in ("patch", "update", "create")]) == writes
    except BaseException:
        print(ctl.logs())
        raise
    finally:
        await agent.stop()


async def health_status(port: int, service: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_leader_failover(
    cluster: FakeKubeAPI, kubeconfig: Path, tmp_path: Path, procs: list[ControllerProc]
) -> None:
    fake = cluster
    fake.create(b.peer("tor", "10.0.0.254"))  # eBGP
    fake.create(b.advertisement("steer", localPref=200))
    first = ControllerProc(kubeconfig, tmp_path, "ctl-1", *lease_args())
    procs.append(first)
    await first.start()
    await fake.wait_until(lambda: holder(fake) == "ctl-1", within=20)
    second = ControllerProc(kubeconfig, tmp_path, "ctl-2", *lease_args())
    procs.append(second)
    await second.start()
    agents = [Agent(second.target, n) for n in ("node-a", "node-b")]
    for a in agents:
        a.start()
    try:
        await fake.wait_until(lambda: bool(ingress(fake, "web")), within=20)
        web = ingress(fake, "web")
        for a in agents:  # the standby serves agents too
            await a.until(lambda a: a.vips() == set(web))
        await fake.wait_until(
            lambda: len(fake.calls(user="admin", resource="leases")) > 0 and holder(fake) == "ctl-1"
        )
        await fake.wait_until(lambda: accepted(fake, "steer").get("status") == "False")
        assert AD_WRITER not in second.log.read_text()  # the standby does not write it
        ad_writes = advertisement_writes(fake)
        killed = time.monotonic()
        first.kill()
        mark = len(fake.records)
        fake.create(b.service("api"))  # needs a leader to get an address
        await fake.wait_until(lambda: holder(fake) == "ctl-2", within=LEASE["duration"] + 5)
        took_over = time.monotonic() - killed
        print(f"standby took over {took_over:.2f} s after the SIGKILL")
        assert took_over <= LEASE["duration"] + 1.0, took_over  # slack: a loaded 2-core box
        await fake.wait_until(lambda: bool(ingress(fake, "api")), within=10)
        api = ingress(fake, "api")
        for a in agents:
            await a.until(lambda a: a.vips() == set(web) | set(api))
            assert a.client.connected
        assert ingress(fake, "web") == web  # no address changed
        rewrites = [r for r in fake.records[mark:] if r.verb == "patch" and r.name == "web"]
        assert not rewrites
        # The new leader finds the condition right (nothing written), and keeps it.
        await fake.wait_until(lambda: AD_WRITER in second.log.read_text())
        fake.patch(b.WEIR, "BGPAdvertisement", "", "steer", {"spec": {"localPref": None}})
        await fake.wait_until(lambda: accepted(fake, "steer").get("observedGeneration") == 2)
        assert accepted(fake, "steer")["status"] == "True"
        assert advertisement_writes(fake) == ad_writes + 1
        assert second.proc.returncode is None
    except BaseException:
        print(first.logs(), second.logs(), sep="\n-----\n")
        raise
    finally:
        for a in agents:
            await a.stop()
