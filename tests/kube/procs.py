"""Real weir-controller processes against the fake API server, and in-process agents
(nodeagent.controller_client with a handler that just records each view)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
from weir.common.pb import pb, pb_grpc
from weir.lab.processes import ControllerOptions
from weir.nodeagent.controller_client import ControllerClient, Identity, NodeView, Update

from .conftest import NAMESPACE, REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Leader election in seconds rather than the defaults' tens of seconds.
FAST_LEASE = (
    "--leader-elect",
    "--lease-duration",
    "4",
    "--renew-deadline",
    "3",
    "--retry-period",
    "0.5",
)


class ControllerProc:
    """One `weir-controller --source kubernetes` process: a plaintext NodePlane on loopback,
    or with tokens=AUDIENCE, TLS from its own CA and a bootstrap port for agents' tokens."""

    def __init__(
        self, kubeconfig: Path, logdir: Path, identity: str, *args: str, tokens: str = ""
    ) -> None:
        self.identity = identity
        self.port = free_port()
        self.bootstrap_port = free_port() if tokens else 0
        self.log = logdir / f"{identity}.log"
        if tokens:
            args = (
                "--agent-token-audience",
                tokens,
                "--bootstrap-listen",
                f"127.0.0.1:{self.bootstrap_port}",
                *args,
            )
        self.argv = ControllerOptions(
            source="kubernetes",
            kubeconfig=kubeconfig,
            secrets_namespace=NAMESPACE,
            listen=f"127.0.0.1:{self.port}",
            plaintext=not tokens,
            identity=identity,
            lease_namespace=NAMESPACE,
            extra=args,
        ).argv()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        """SIGKILL: no goodbye, the Lease is not released."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        """Kill (if still running) and reap."""
        self.kill()
        if self.proc is not None:
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def snapshot(self) -> pb.ClusterSnapshot:
        async with grpc.aio.insecure_channel(self.target) as ch:
            return await pb_grpc.NodePlaneStub(ch).GetSnapshot(pb.GetSnapshotRequest(), timeout=5)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


class Agent:
    """An agent that accepts every version and remembers the view."""

    def __init__(self, target: str, node: str, identity: Identity | None = None) -> None:
        self.client = ControllerClient(
            target, node, self._apply, tls=identity, backoff_initial=0.05, backoff_max=0.5
        )
        self.updates: list[Update] = []
        self.view: NodeView | None = None
        self.versions: list[int] = []
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _apply(self, update: Update) -> pb.Ack:
        self.view = update.view
        self.updates.append(update)
        self.versions.append(update.version)
        self._changed.set()
        self._changed = asyncio.Event()
        return pb.Ack()

    def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def vips(self) -> set[str]:
        return {s.vip for s in self.view.services.values()} if self.view else set()

    async def until(self, predicate: Callable[[Agent], bool], within: float = 20) -> None:
        async with asyncio.timeout(within):
            while not predicate(self):
                await self._changed.wait()
