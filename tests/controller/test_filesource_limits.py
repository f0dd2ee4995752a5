"""The file source against files that could hurt the controller: deep nesting, alias bombs,
FIFOs, devices, big files, and files caught half-written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from weir.controller.core.state import ClusterState
from weir.controller.sources.files import FileSource
from weir.controller.sources.manifest import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    ManifestError,
    read_manifest,
)

from tests.controller.controller_proc import running_controller, weirctl
from tests.controller.reduce_support import endpoint_slice, service
from tests.controller.test_filesource import PICKUP, file_errors, service_names, until, write

pytestmark = pytest.mark.timeout(60)

DEEP = 30_000  # levels: 60 KB of brackets overflowed the reader thread's stack


async def test_deep_nesting_is_reported_and_the_controller_lives_on(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    deep = {
        "sequences.yaml": "a: " + "[" * DEEP + "]" * DEEP,
        "maps.yaml": "{a: " * DEEP + "}" * DEEP,
        "objects.json": '{"a":' * DEEP + "1" + "}" * DEEP,
    }
    for name, text in deep.items():
        (manifests / name).write_text(text)
    write(manifests / "web.yaml", service("web", ips=["192.0.2.10"]))
    async with running_controller(manifests) as (_, target):
        errors = json.loads(await weirctl(target, "errors", "-o", "json"))["errors"]
        snapshot = json.loads(await weirctl(target, "snapshot", "-o", "json"))
    assert {e["name"]: e["message"] for e in errors if e["kind"] == "File"} == {
        str(manifests / name): f"not read: nested more than {MAX_DEPTH} levels deep"
        for name in deep
    }
    assert [s["id"] for s in snapshot["services"]] == ["192.0.2.10:80/TCP"]


def test_nesting_and_alias_limits(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    assert read_manifest(path)  # as deep as allowed
    path.write_text("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(ManifestError, match="nested more than"):
        read_manifest(path)
    # Shallow anchors whose alias lands deep count as deep.
    path.write_text("x: &x " + "[" * 40 + "]" * 40 + "\ny: " + "[" * 30 + "*x" + "]" * 30)
    with pytest.raises(ManifestError, match="nested more than"):
        read_manifest(path)
    # A billion laughs: each level ten aliases of the one before.
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path.write_text("\n".join(lines))
    with pytest.raises(ManifestError, match=f"expand to more than {MAX_ALIAS_NODES}"):
        read_manifest(path)
    # Ordinary anchors are fine.
    path.write_text("a: &labels {app: web}\nb: {labels: *labels}\n")
    assert read_manifest(path) == [{"a": {"app": "web"}, "b": {"labels": {"app": "web"}}}]


@contextlib.asynccontextmanager
async def following(directory: Path, **options: float) -> AsyncIterator[ClusterState]:
    state = ClusterState()
    task = asyncio.create_task(FileSource(directory, **options).run(state))
    try:
        yield state
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_only_regular_files_of_bounded_size_are_read(tmp_path: Path) -> None:
    fifo, device, big = tmp_path / "fifo.yaml", tmp_path / "device.yaml", tmp_path / "big.yaml"
    os.mkfifo(fifo)
    device.symlink_to("/dev/null")  # stands for /dev/zero, which an unbounded read never ends
    big.write_text(yaml.safe_dump(service("big")) + "#" * 5000)
    write(tmp_path / "good.yaml", service("good", ips=["192.0.2.1"]))
    try:
        async with following(tmp_path, poll_interval=0.05, settle=0, max_bytes=4096) as state:
            await until(state, lambda: len(file_errors(state)) == 3, within=5)
            errors = file_errors(state)
            assert errors[str(fifo)] == "not read: a FIFO, not a regular file"
            assert errors[str(device)] == "not read: a character device, not a regular file"
            assert errors[str(big)].startswith("not read: ")
            assert "more than the limit of 4096 (--manifest-max-bytes)" in errors[str(big)]
            assert service_names(state) == {"good"}
            # The reader is not stuck on any of them: later edits are read.
            write(tmp_path / "good.yaml", service("good", ips=["192.0.2.2"]))
            await until(
                state,
                lambda: (
                    state.inputs().services[("default", "good")].requested_ips == ("192.0.2.2",)
                ),
            )
    finally:
        # Release a reader blocked in open() on the FIFO, should there be one.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def backends(state: ClusterState) -> tuple[str, ...] | None:
    s = state.inputs().endpoint_slices.get(("default", "web-1"))
    return None if s is None else tuple(e.address for e in s.endpoints)


async def test_a_file_written_in_place_is_read_once_it_settled(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    before = ("10.0.0.1", "10.0.0.2")
    after = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    write(path, service("web", ips=["192.0.2.1"]), endpoint_slice("web-1", "web", list(before)))
    full = yaml.safe_dump_all(
        [service("web", ips=["192.0.2.1"]), endpoint_slice("web-1", "web", list(after))]
    )
    half = full[: full.index("- 10.0.0.2")]  # cut inside the endpoint list: still valid YAML
    async with following(tmp_path, poll_interval=0.02, settle=0.3) as state:
        await until(state, lambda: backends(state) == before)
        seen: list[tuple[str, ...] | None] = []

        async def record() -> None:
            generation = state.generation
            while True:
                generation = await state.wait_changed(generation)
                seen.append(backends(state))

        recorder = asyncio.create_task(record())
        try:
            with path.open("r+") as f:  # in place, as `cat > file` or a copy does it
                f.truncate(0)
                f.write(half)
                f.flush()
                await asyncio.sleep(0.1)  # a slow writer: the source polls five times meanwhile
                f.write(full[len(half) :])
            await until(state, lambda: backends(state) == after, within=PICKUP)
        finally:
            recorder.cancel()
    assert set(seen) == {after}


async def test_a_file_renamed_into_place_is_read_at_once(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    write(path, service("web", ips=["192.0.2.1"]))
    os.utime(path, (1, 1))  # written long ago
    async with following(tmp_path, settle=5.0) as state:
        await until(state, lambda: service_names(state) == {"web"})
        write(path, service("web", ips=["192.0.2.2"]))  # write a copy, rename it over the file
        await until(
            state,
            lambda: state.inputs().services[("default", "web")].requested_ips == ("192.0.2.2",),
            within=PICKUP,
        )
