"""Lease-based leader election against the fake API server with the real client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from weir.controller.kube.api import KubeAPI
from weir.controller.kube.leader import LeaderElector, LeaseConfig

from .conftest import NAMESPACE
from .fakeapi import FakeKubeAPI

pytestmark = pytest.mark.timeout(60)

FAST = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.25}


@contextlib.asynccontextmanager
async def client_for(fake: FakeKubeAPI, user: str, tmp_path: Path) -> AsyncIterator[KubeAPI]:
    path = fake.write_kubeconfig(tmp_path / f"kubeconfig-{user}", user=user)
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        yield KubeAPI(api, request_timeout=2.0)


class Candidate:
    """An elector whose lead() records when it started and stopped leading."""

    def __init__(self, api: KubeAPI, name: str) -> None:
        self.elector = LeaderElector(api, LeaseConfig(NAMESPACE, identity=name, **FAST))
        self.started = asyncio.Event()
        self.start_at = self.stop_at = 0.0
        self.task: asyncio.Task[None] | None = None

    async def lead(self) -> None:
        self.start_at = time.monotonic()
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.stop_at = time.monotonic()

    def run(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self.lead))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def lease(fake: FakeKubeAPI) -> dict:
    got = fake.get("coordination.k8s.io/v1", "Lease", NAMESPACE, "weir-controller")
    assert got is not None
    return got["spec"]


async def test_one_leader_and_release_on_shutdown(fake: FakeKubeAPI, tmp_path: Path) -> None:
    async with client_for(fake, "a", tmp_path) as api_a, client_for(fake, "b", tmp_path) as api_b:
        a, b = Candidate(api_a, "a"), Candidate(api_b, "b")
        a.run()
        await asyncio.wait_for(a.started.wait(), 5)
        b.run()
        await fake.wait_until(lambda: len(fake.calls(user="b", resource="leases")) >= 2)
        assert not b.started.is_set() and lease(fake)["holderIdentity"] == "a"
        released = time.monotonic()
        await a.stop()  # a graceful stop gives the Lease up
        assert lease(fake)["holderIdentity"] in ("", "b")
        await asyncio.wait_for(b.started.wait(), 5)
        assert b.start_at - released < FAST["retry_period"] * 1.2 + 1.0
        spec = lease(fake)
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
        await b.stop()


async def test_cut_off_leader_stops_before_standby_starts(
    fake: FakeKubeAPI, tmp_path: Path
) -> None:
    async with client_for(fake, "a", tmp_path) as api_a, client_for(fake, "b", tmp_path) as api_b:
        a, b = Candidate(api_a, "a"), Candidate(api_b, "b")
        a.run()
        await asyncio.wait_for(a.started.wait(), 5)
        b.run()
        await fake.wait_until(lambda: len(fake.calls(user="b", resource="leases")) >= 2)
        fake.authorizer = lambda rec: rec.user != "a"  # a can no longer reach the API
        cut = time.monotonic()  # a's last renewal was before this
        await asyncio.wait_for(b.started.wait(), FAST["lease_duration"] + 2)
        # a stopped on its renew deadline, before its Lease expired and b took over.
        assert a.stop_at and a.stop_at < b.start_at
        assert a.stop_at - cut <= FAST["renew_deadline"] + FAST["retry_period"] + 1.0
        assert b.start_at - cut <= FAST["lease_duration"] + 1.0
        await a.stop()
        await b.stop()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        LeaseConfig("ns", identity="x", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError):
        LeaseConfig("ns", identity="")
