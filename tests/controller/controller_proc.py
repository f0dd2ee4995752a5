"""A weir-controller process for the tests, with its JSON log parsed as it comes, and weirctl."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from weir.lab.processes import ControllerOptions

BIN = Path(sys.executable).parent


class Controller:
    """A weir-controller process; its JSON log lines are parsed as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.metrics = ""  # host:port of its /metrics
        self.lines: list[dict] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": raw.decode(errors="replace").rstrip()})
            self._new_line.set()
        self._new_line.set()

    async def wait_log(self, event: str, **fields: object) -> dict:
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                    return line
            seen = len(self.lines)
            if self._reader.done():
                raise AssertionError(f"controller exited before logging {event!r}: {self.lines}")
            self._new_line.clear()
            await self._new_line.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def weirctl(target: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "weirctl"),
        "--controller",
        target,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


@contextlib.asynccontextmanager
async def running_controller(
    manifests: Path, **options: Any
) -> AsyncIterator[tuple[Controller, str]]:
    """weir-controller in plaintext on manifests, once it published version 1: (it, target).
    options: more ControllerOptions fields."""
    opts = ControllerOptions(manifests=manifests, listen="127.0.0.1:0", debounce_ms=20, **options)
    proc = await asyncio.create_subprocess_exec(*opts.argv(), stderr=asyncio.subprocess.PIPE)
    ctl = Controller(proc)
    try:
        async with asyncio.timeout(30):
            listening = await ctl.wait_log("gRPC server listening")
            await ctl.wait_log("snapshot published", version=1)
        yield ctl, f"127.0.0.1:{listening['port']}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        ctl._reader.cancel()
