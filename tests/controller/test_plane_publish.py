"""The publisher: cluster state changes -> debounce -> reduce -> snapshot versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.publish import Publisher
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.state import ClusterState

from tests.controller.reduce_support import FILES, endpoint_slice, service

pytestmark = pytest.mark.timeout(30)

SID = "192.0.2.1:80/TCP"


def backends(store: SnapshotStore) -> list[str]:
    cluster = store.cluster()
    return [b.address for s in cluster.services if s.id == SID for b in s.backends]


def slice_with(*ips: str) -> dict:
    return endpoint_slice("web-1", "web", list(ips))


@pytest.fixture
async def running() -> AsyncIterator[tuple[ClusterState, SnapshotStore, Publisher]]:
    state, store = ClusterState(), SnapshotStore()
    publisher = Publisher(state, store, FILES, debounce=0.2)
    task = asyncio.create_task(publisher.run())
    yield state, store, publisher
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_burst_makes_one_version(running) -> None:
    state, store, _ = running
    state.replace(ALL_KINDS, [service("web"), slice_with("10.0.0.1")])
    async with asyncio.timeout(10):
        assert await store.wait_published() == 1
        # A rolling update: twenty endpoint changes inside one debounce window.
        for i in range(2, 22):
            state.upsert(slice_with(*(f"10.0.0.{j}" for j in range(1, i + 1))))
            await asyncio.sleep(0)  # let the publisher run between changes
        assert await store.wait_newer(1) == 2
        assert backends(store) == [f"10.0.0.{j}" for j in range(1, 22)]
        # Had the burst made more than one version, this change would not be version 3.
        state.upsert(slice_with("10.0.0.99"))
        assert await store.wait_newer(2) == 3
    assert backends(store) == ["10.0.0.99"]


async def test_a_change_after_a_quiet_window_is_published_at_once() -> None:
    # A window long against the deadlines below: were the first change held for it, the
    # first deadline would expire first; the second change is seen held for half of it.
    state, store = ClusterState(), SnapshotStore()
    publisher = Publisher(state, store, FILES, debounce=2.0)
    task = asyncio.create_task(publisher.run())
    try:
        state.replace(ALL_KINDS, [service("web"), slice_with("10.0.0.1")])
        async with asyncio.timeout(1):
            assert await store.wait_published() == 1
        # Inside the window after version 1: held until the window ends.
        state.upsert(slice_with("10.0.0.2"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await store.wait_newer(1)
        async with asyncio.timeout(10):
            assert await store.wait_newer(1) == 2
        assert backends(store) == ["10.0.0.2"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_changes_that_do_not_alter_the_snapshot_make_no_version(running) -> None:
    state, store, _ = running
    objects = [service("web"), slice_with("10.0.0.1")]
    state.replace(ALL_KINDS, objects)
    async with asyncio.timeout(10):
        assert await store.wait_published() == 1
        state.replace(ALL_KINDS, objects)  # a relist of the same objects
        state.upsert(service("web", labels={"team": "blue"}))  # changes the state, not the view
        generation = state.generation
        state.upsert(slice_with("10.0.0.2"))
        assert await store.wait_newer(1) == 2
    assert generation > 1 and backends(store) == ["10.0.0.2"]


async def test_nothing_is_published_before_every_kind_was_listed() -> None:
    state, store = ClusterState(), SnapshotStore()
    publisher = Publisher(state, store, FILES, debounce=0)
    task = asyncio.create_task(publisher.run())
    try:
        state.replace(frozenset({"Service"}), [service("web")])
        for _ in range(20):
            await asyncio.sleep(0)  # give the publisher every chance to publish early
        assert store.version == 0
        state.replace(ALL_KINDS - {"Service"}, [slice_with("10.0.0.1")])
        async with asyncio.timeout(10):
            assert await store.wait_published() == 1
        assert backends(store) == ["10.0.0.1"]  # the first version already has everything
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_errors_from_state_and_reduce(running) -> None:
    state, store, publisher = running
    bad = service("bad", ips=["not-an-ip"])
    clash = service("clash", created="2030-01-01T00:00:00Z")  # same VIP:port as web, younger
    state.replace(ALL_KINDS, [service("web", created="2024-01-01T00:00:00Z"), clash, bad])
    async with asyncio.timeout(10):
        await store.wait_published()
    errors = publisher.errors()
    assert [(e.kind, e.name) for e in errors] == [("Service", "bad"), ("Service", "clash")]
    assert publisher.metrics.registry.get_sample_value("weir_object_errors") == 2


async def test_a_failing_reduce_keeps_the_last_version(running, monkeypatch) -> None:
    state, store, publisher = running
    state.replace(ALL_KINDS, [service("web"), slice_with("10.0.0.1")])
    async with asyncio.timeout(10):
        await store.wait_published()
    failed = asyncio.Event()

    def broken(inputs):
        failed.set()
        raise RuntimeError("boom")

    monkeypatch.setattr(publisher, "_reduce", broken)
    state.upsert(slice_with("10.0.0.2"))
    async with asyncio.timeout(10):
        await failed.wait()
    assert store.version == 1 and backends(store) == ["10.0.0.1"]
    assert [e.message for e in publisher.errors()] == ["reduce: boom"]
    monkeypatch.undo()
    state.upsert(slice_with("10.0.0.3"))
    async with asyncio.timeout(10):
        assert await store.wait_newer(1) == 2
    assert backends(store) == ["10.0.0.3"] and publisher.errors() == []
