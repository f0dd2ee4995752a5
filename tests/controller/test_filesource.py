"""The file source: a directory of manifests followed on disk (awaiting the state, no sleeps)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml
from weir.common.pb import pb
from weir.controller.core.reduce import ReduceResult, reduce
from weir.controller.core.state import ClusterState
from weir.controller.sources.files import FileSource

from tests.controller.reduce_support import FILES, endpoint_slice, service

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "files"
LAB = EXAMPLES.with_name("lab")
PICKUP = 1.0  # edits on disk are picked up within a second


async def until(state: ClusterState, check: Callable[[], bool], within: float = PICKUP) -> float:
    """Await state changes until check() holds; the time it took. Fails after `within` seconds."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while True:
            generation = state.generation
            if check():
                return time.monotonic() - start
            await state.wait_changed(generation)


def write(path: Path, *docs: object) -> None:
    # Write then rename, as editors and ConfigMap updates do: readers never see half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    os.replace(tmp, path)


def service_names(state: ClusterState) -> set[str]:
    return {name for _, name in state.inputs().services}


def file_errors(state: ClusterState) -> dict[str, str]:
    return {e.name: e.message for e in state.errors() if e.kind == "File"}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Path, ClusterState]]:
    state = ClusterState()
    task = asyncio.create_task(FileSource(tmp_path).run(state))
    try:
        yield tmp_path, state
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_load_edit_and_remove(running: tuple[Path, ClusterState]) -> None:
    directory, state = running
    await until(state, lambda: state.listed_kinds != frozenset())  # the empty directory listed
    write(directory / "web.yaml", service("web"), endpoint_slice("web-1", "web", ["10.0.0.1"]))
    write(directory / "db.yml", {"kind": "List", "items": [service("db", ips=["192.0.2.2"])]})
    await until(state, lambda: service_names(state) == {"web", "db"})

    write(directory / "web.yaml", service("web"), endpoint_slice("web-1", "web", ["10.0.0.9"]))

    def web_backend_is_new() -> bool:
        slices = state.inputs().endpoint_slices
        s = slices.get(("default", "web-1"))
        return s is not None and [e.address for e in s.endpoints] == ["10.0.0.9"]

    assert await until(state, web_backend_is_new) < PICKUP

    (directory / "db.yml").unlink()
    assert await until(state, lambda: service_names(state) == {"web"}) < PICKUP
    result = reduce(state.inputs(), FILES)
    assert [(s.id, [b.address for b in s.backends]) for s in result.cluster.services] == [
        ("192.0.2.1:80/TCP", ["10.0.0.9"])
    ]


async def test_unparsable_yaml_is_reported_and_isolated(
    running: tuple[Path, ClusterState],
) -> None:
    directory, state = running
    write(directory / "a.yaml", service("a", ips=["192.0.2.1"]))
    write(directory / "b.yaml", service("b", ips=["192.0.2.2"]))
    await until(state, lambda: service_names(state) == {"a", "b"})

    broken = directory / "b.yaml"
    broken.write_text("kind: Service\nmetadata: {name: b\n  - [unclosed\n")
    write(directory / "c.yaml", service("c", ips=["192.0.2.3"]), "just a string", {"no": "kind"})
    await until(state, lambda: str(broken) in file_errors(state) and "c" in service_names(state))
    errors = file_errors(state)
    assert errors[str(broken)].startswith("unparsable: ")
    assert "keeping its last good objects" in errors[str(broken)]
    assert "line" in errors[str(broken)]  # the YAML error's position
    c_errors = [e for e in state.errors() if e.name == str(directory / "c.yaml")]
    assert [e.message for e in c_errors] == [
        "document 2: not an object but str",
        "document 3: has no kind",
    ]
    # a still flows, b keeps its last good content while broken, c is loaded.
    assert service_names(state) == {"a", "b", "c"}

    write(broken, service("b", ips=["192.0.2.22"]))
    await until(state, lambda: str(broken) not in file_errors(state))
    assert state.inputs().services[("default", "b")].requested_ips == ("192.0.2.22",)


async def test_broken_file_at_start_contributes_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("{{{")
    write(tmp_path / "good.yaml", service("good"))
    state = ClusterState()
    task = asyncio.create_task(FileSource(tmp_path).run(state))
    try:
        await until(state, lambda: service_names(state) == {"good"})
        assert list(file_errors(state)) == [str(tmp_path / "bad.yaml")]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_duplicates_hidden_files_and_other_kinds(
    running: tuple[Path, ClusterState],
) -> None:
    directory, state = running
    write(directory / "1.yaml", service("web", ips=["192.0.2.1"]))
    write(directory / "2.yaml", service("web", ips=["192.0.2.99"]), {"kind": "Deployment"})
    (directory / "..2024_01_01").mkdir()  # a ConfigMap mount's timestamped folder
    write(directory / "..2024_01_01" / "3.yaml", service("hidden"))
    write(directory / "notes.txt", service("txt"))
    await until(state, lambda: service_names(state) == {"web"} and bool(state.errors()))
    assert state.inputs().services[("default", "web")].requested_ips == ("192.0.2.1",)
    (dup,) = state.errors()
    assert (dup.kind, dup.namespace, dup.name) == ("Service", "default", "web")
    assert str(directory / "2.yaml") in dup.message and "ignored" in dup.message


async def test_missing_directory_is_reported_then_followed(tmp_path: Path) -> None:
    directory = tmp_path / "later"
    state = ClusterState()
    task = asyncio.create_task(FileSource(directory).run(state))
    try:
        await until(state, lambda: str(directory) in file_errors(state))
        staging = tmp_path / "staging"
        staging.mkdir()
        write(staging / "web.yaml", service("web"))
        staging.rename(directory)
        await until(state, lambda: service_names(state) == {"web"} and not file_errors(state))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def load(examples: Path, tmp_path: Path) -> ReduceResult:
    """A directory of examples through the file source and reduce, with no error."""
    directory = tmp_path / examples.name
    shutil.copytree(examples, directory)
    state = ClusterState()
    task = asyncio.create_task(FileSource(directory).run(state))
    try:
        await until(state, lambda: bool(state.listed_kinds), within=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert state.errors() == []
    result = reduce(state.inputs(), FILES)
    assert result.errors == ()
    return result


async def test_the_lab_manifests_load_cleanly(tmp_path: Path) -> None:
    # The web backends are hosts on the LB segment with the VIP on their loopback: no
    # nodeName, so auto keeps them on L2 DSR. The shop pods run on the workers: encapsulated
    # to their node, port 80 -> the named port http (8080), 9000 -> 9090.
    result = await load(LAB, tmp_path)
    modes = {
        (s.id, b.address, b.port, b.forwarding, b.node_address)
        for s in result.cluster.services
        for b in s.backends
    }
    web = {m for m in modes if m[0].startswith("192.0.2.10:")}
    assert {(s, a, p, f, n) for s, a, p, f, n in web} == {
        (sid, f"10.66.0.2{i}", port, pb.FORWARDING_L2_DSR, "")
        for sid, port in (("192.0.2.10:80/TCP", 80), ("192.0.2.10:53/UDP", 53))
        for i in range(1, 5)
    }
    shop = modes - web
    assert {(s, a, p) for s, a, p, _, _ in shop} == {
        (f"192.0.2.20:{port}/{proto}", f"10.244.{n}.{h}", target)
        for port, proto, target in ((80, "TCP", 8080), (9000, "TCP", 9090), (53, "UDP", 5353))
        for n in (1, 2, 3)
        for h in (10, 11)
    }
    assert all(
        f == pb.FORWARDING_ENCAP and n == f"10.66.2.1{a.split('.')[2]}" for _, a, _, f, n in shop
    )
    views = {v.node: v.config for v in result.cluster.node_views}
    assert list(views) == ["lb1", "lb2", "lb3", "n1", "n2", "n3"]
    assert all(
        views[n].load_balancer and not views[n].local_endpoints for n in ("lb1", "lb2", "lb3")
    )
    for n in ("n1", "n2", "n3"):
        assert not views[n].load_balancer and len(views[n].local_endpoints) == 6
        assert list(views[n].lb_node_addresses) == ["10.66.0.11", "10.66.0.12", "10.66.0.13"]


async def test_the_examples_load_cleanly(tmp_path: Path) -> None:
    result = await load(EXAMPLES, tmp_path)
    strategies = {s.service: s.strategy for s in result.cluster.services}
    assert set(strategies) == {"demo/web", "demo/dns", "demo/api", "demo/shop", "demo/metal"}
    sizes = {s.service: s.maglev_table_size for s in result.cluster.services}
    assert sizes["demo/api"] == 4093
    assert all(s.backends for s in result.cluster.services)
    assert [n.node for n in result.cluster.nodes] == ["lb-1", "lb-2"]
    assert all(n.bgp.peers[0].password for n in result.cluster.nodes)
    # Pods on the workers by encapsulation (port 80 -> 8080), hosts by L2 DSR.
    modes = {
        (s.service, b.address, b.port, b.forwarding, b.node_address)
        for s in result.cluster.services
        if s.service in ("demo/shop", "demo/metal")
        for b in s.backends
    }
    assert modes == {
        ("demo/shop", "10.244.1.10", 8080, pb.FORWARDING_ENCAP, "172.30.1.21"),
        ("demo/shop", "10.244.2.10", 8080, pb.FORWARDING_ENCAP, "172.30.1.22"),
        ("demo/shop", "10.244.3.10", 8080, pb.FORWARDING_ENCAP, "172.30.1.23"),
        ("demo/metal", "172.30.0.21", 80, pb.FORWARDING_L2_DSR, ""),
        ("demo/metal", "172.30.0.22", 80, pb.FORWARDING_L2_DSR, ""),
    }
    views = {v.node: v.config for v in result.cluster.node_views}
    assert [n for n, c in views.items() if c.load_balancer] == ["lb-1", "lb-2"]
    assert [n for n, c in views.items() if c.local_endpoints] == [
        "worker-1",
        "worker-2",
        "worker-3",
    ]
    assert views["worker-3"].lb_node_addresses == ["172.30.0.11", "172.30.0.12"]


async def test_odd_files_do_not_stop_the_source(running: tuple[Path, ClusterState]) -> None:
    directory, state = running
    (directory / "loop").mkdir()
    (directory / "loop" / "again").symlink_to(directory)  # a symlink loop
    (directory / "date.yaml").write_text("kind: Service\nmetadata: {name: d}\nwhen: 2024-13-45\n")
    (directory / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (directory / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    write(directory / "good.yaml", service("good"))
    await until(state, lambda: service_names(state) == {"good"} and len(file_errors(state)) == 3)
    assert set(file_errors(state)) == {
        str(directory / n) for n in ("date.yaml", "binary.yaml", "deep.yaml")
    }
