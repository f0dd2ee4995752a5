"""KubernetesSource against the fake API server with the real client: list, watch, bookmarks,
410 relists that change nothing, and API outages that keep the last good state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import SERVICES, KubeAPI
from weir.controller.sources.kubernetes import KubernetesSource, Watched

from .builders import node, pool, secret, service
from .conftest import NAMESPACE
from .fakeapi import FakeKubeAPI
from .tcpproxy import FreezingProxy

pytestmark = pytest.mark.timeout(60)


async def until(state: ClusterState, predicate: Callable[[], bool], within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await state.wait_changed(state.generation)


@pytest.fixture
def source(kube: KubeAPI) -> KubernetesSource:
    return KubernetesSource(kube, NAMESPACE, page_size=2, backoff_base=0.05, backoff_cap=0.3)


@pytest.fixture
async def state(source: KubernetesSource, fake: FakeKubeAPI) -> AsyncIterator[ClusterState]:
    fake.create(pool("default", "192.0.2.0/28"))
    fake.create(node("node-a", "10.0.0.1"))
    fake.create(secret("bgp", NAMESPACE, password="pw"))
    fake.create(secret("elsewhere", "default", password="no"))
    for i in range(5):
        fake.create(service(f"s{i}"))
    st = ClusterState()
    task = asyncio.create_task(source.run(st))
    try:
        await until(st, lambda: st.listed_kinds == ALL_KINDS)
        await fake.wait_until(lambda: fake.watch_count() == 8)  # 7 kinds and Namespaces
        yield st
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def names(st: ClusterState) -> list[str]:
    return sorted(name for _, name in st.inputs().services)


async def test_list_then_watch(state: ClusterState, fake: FakeKubeAPI) -> None:
    inputs = state.inputs()
    assert names(state) == [f"s{i}" for i in range(5)]
    assert list(inputs.pools) == ["default"] and list(inputs.nodes) == ["node-a"]
    assert list(inputs.secrets) == [(NAMESPACE, "bgp")]  # only the controller's namespace
    assert len(fake.calls(verb="list", resource="services")) == 3  # pages of 2
    fake.create(service("new"))
    fake.delete("v1", "Service", "default", "s0")
    fake.patch(
        "v1",
        "Service",
        "default",
        "s1",
        {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}},
        subresource="status",
    )
    await until(
        state,
        lambda: (
            names(state) == ["new", "s1", "s2", "s3", "s4"]
            and state.inputs().services[("default", "s1")].ingress_ips == ("192.0.2.1",)
        ),
    )
    assert len(fake.calls(verb="list", resource="services")) == 3  # no relist needed


async def test_gone_relists_without_change(state: ClusterState, fake: FakeKubeAPI) -> None:
    lists = len(fake.calls(verb="list", resource="services"))
    generation = state.generation
    fake.compact()
    fake.expire_watches()  # ERROR 410 on every open watch
    await fake.wait_until(
        lambda: (
            len(fake.calls(verb="list", resource="services")) > lists and fake.watch_count() == 8
        )
    )
    assert state.generation == generation  # the relist found nothing new
    # Events missed while the watch was down are found by the relist.
    await fake.stop_listening()
    fake.delete("v1", "Service", "default", "s0")
    fake.compact()
    await fake.start()
    await until(state, lambda: "s0" not in names(state))


async def test_gone_as_http_status(state: ClusterState, fake: FakeKubeAPI) -> None:
    fake.gone_as_http = True
    await fake.stop_listening()
    fake.create(service("late"))
    fake.compact()
    await fake.start()
    await until(state, lambda: "late" in names(state))
    assert any(r.code == 410 for r in fake.calls(verb="watch", resource="services"))


async def test_outage_keeps_last_state(state: ClusterState, fake: FakeKubeAPI) -> None:
    before = state.inputs()
    lists = len(fake.records)
    assert state.follows("Node") and state.follows("Service")
    fake.set_down(True)
    await fake.wait_until(lambda: fake.refused >= 16)  # every reflector retried, twice or so
    assert state.inputs() == before
    # Known lost (what stops the health reports' ageing), the objects kept.
    assert not state.follows("Node") and not state.follows("Service")
    fake.create(service("during"))
    fake.set_down(False)
    await until(state, lambda: "during" in names(state))
    # The watch that brought it is open (or the list that did was made): followed again.
    assert state.follows("Service")
    nodes_back = asyncio.Event()
    state.node_listeners.append(lambda: state.follows("Node") and nodes_back.set())
    if not state.follows("Node"):
        await asyncio.wait_for(nodes_back.wait(), 10)
    # The history still held the missed events: watches resumed, nothing was relisted.
    assert not [r for r in fake.records[lists:] if r.verb == "list"]


async def test_bookmarks_move_the_resource_version(state: ClusterState, fake: FakeKubeAPI) -> None:
    for i in range(3):  # writes the source does not watch move the global resourceVersion
        fake.create(secret(f"other{i}", "default", x="y"))
    rv = str(fake.resource_version)
    fake.send_bookmarks()
    fake.compact()
    fake.expire_watches(gone=False)  # the bookmark is read before the end of the stream
    await fake.wait_until(lambda: len(fake.calls(verb="watch", resource="services")) == 2)
    rewatch = fake.calls(verb="watch", resource="services")[-1]
    assert rewatch.resource_version == rv and rewatch.code == 200
    assert len(fake.calls(verb="list", resource="services")) == 3


async def test_resync_relists_on_demand(
    state: ClusterState, source: KubernetesSource, fake: FakeKubeAPI
) -> None:
    lists = len(fake.calls(verb="list", resource="services"))
    pools = len(fake.calls(verb="list", resource="loadbalancerippools"))
    nodes = len(fake.calls(verb="list", resource="nodes"))
    await asyncio.wait_for(source.resync({"Service", "LoadBalancerIPPool"}), 10)
    assert len(fake.calls(verb="list", resource="services")) == lists + 3  # pages of 2
    assert len(fake.calls(verb="list", resource="loadbalancerippools")) == pools + 1
    assert len(fake.calls(verb="list", resource="nodes")) == nodes
    await fake.wait_until(lambda: fake.watch_count() == 8)
    fake.create(service("after"))  # and the watch goes on from the new list
    await until(state, lambda: "after" in names(state))


async def test_a_watch_gone_quiet_is_taken_for_dead_and_relisted(
    fake: FakeKubeAPI, tmp_path: Path
) -> None:
    proxy = FreezingProxy(fake.port)
    await proxy.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "through-proxy")
    kubeconfig.write_text(
        kubeconfig.read_text().replace(fake.url, f"https://127.0.0.1:{proxy.port}")
    )
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    fake.create(service("early"))
    state = ClusterState(frozenset({"Service"}))
    async with client.ApiClient(cfg) as api_client:
        source = KubernetesSource(
            KubeAPI(api_client, request_timeout=5.0),
            NAMESPACE,
            quiet_after=1.0,  # the fake sends a bookmark every 0.2 s
            backoff_base=0.05,
            backoff_cap=0.3,
            watched=[Watched(SERVICES)],
        )
        task = asyncio.create_task(source.run(state))
        try:
            await until(state, lambda: names(state) == ["early"])
            await fake.wait_until(lambda: fake.watch_count("services") == 1)
            lists = len(fake.calls(verb="list", resource="services"))
            assert proxy.freeze() >= 1  # the watch's connection: open, and silent
            fake.create(service("late"))
            await until(state, lambda: names(state) == ["early", "late"])
            assert len(fake.calls(verb="list", resource="services")) == lists + 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await proxy.close()
