"""BFDMonitor: the agent's side of its BFD daemon (daemon.py). One supervised task starts
the daemon when there is a session to run, tells it the sessions wanted (the whole set,
whenever it changes), reads what the sessions show, and starts it again after a backoff
if it dies (its sessions are unknown meanwhile; the peers' timers notice the silence).

`on_change(peer)` is called from the event loop whenever what status(peer) returns
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from weir.common.logs import get_logger
from weir.nodeagent.bfd import messages
from weir.nodeagent.bfd.session import Negotiated, Settings

log = get_logger("weir.bfd")


@dataclass(frozen=True)
class BFDOptions:
    """How to run the daemon; `prefix` runs it under another command (tests use
    `ip netns exec NAME`, as for ExaBGP)."""

    command: Sequence[str] = (sys.executable, "-m", "weir.nodeagent.bfd.daemon")
    prefix: Sequence[str] = ()
    stop_timeout: float = 2.0


class BFDMonitor:
    BACKOFF_MIN = 0.2
    BACKOFF_MAX = 10.0
    STABLE_RUN = 60.0

    def __init__(
        self,
        options: BFDOptions | None = None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._opts = options or BFDOptions()
        self._on_change = on_change
        self._wanted: dict[str, Settings] = {}
        self._shown: dict[str, Negotiated] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="bfd-daemon")

    def set_sessions(self, sessions: Mapping[str, Settings]) -> None:
        """The sessions to run now, by peer address (an empty map stops the daemon)."""
        wanted = dict(sessions)
        if wanted == self._wanted:
            return
        self._wanted = wanted
        for peer in [p for p in self._shown if p not in wanted]:
            self._set(peer, None)
        self._wake.set()
        self._tell()

    def status(self, peer: str) -> Negotiated | None:
        """What the peer's session shows; None when there is none, or it is not known."""
        return self._shown.get(peer)

    async def stop(self, admin_down: bool) -> None:
        """admin_down: tell the peers the sessions go away on purpose (RFC 5882: not a
        failure); otherwise vanish as a crash does."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            if admin_down:
                with contextlib.suppress(ConnectionError):
                    proc.stdin.write(messages.STOP_LINE)
                    await proc.stdin.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), self._opts.stop_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---------------------------------------------------------------------------------------

    def _set(self, peer: str, shown: Negotiated | None) -> None:
        if self._shown.get(peer) == shown:
            return
        if shown is None:
            self._shown.pop(peer, None)
        else:
            self._shown[peer] = shown
        if self._on_change is not None:
            try:
                self._on_change(peer)
            except Exception:
                log.exception("bfd on_change callback failed")

    def _tell(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(messages.sessions_line(self._wanted))

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            if not self._wanted:
                self._wake.clear()
                await self._wake.wait()
                continue
            began = time.monotonic()
            try:
                reason = await self._run_once()
            except OSError as exc:
                reason = f"cannot start: {exc}"
            failures = 0 if time.monotonic() - began > self.STABLE_RUN else failures + 1
            if self._stopping or not self._wanted:
                continue
            delay = min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** max(0, failures - 1))
            log.error("bfd daemon stopped, restarting it", reason=reason, delay=delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _run_once(self) -> str:
        argv = [*self._opts.prefix, *self._opts.command]
        # Like ExaBGP: the daemon dies with the agent (its stdin closing says the same).
        if setpriv := shutil.which("setpriv"):
            argv = [setpriv, "--pdeathsig", "KILL", *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        log.info("bfd daemon started", pid=proc.pid, sessions=sorted(self._wanted))
        logs = asyncio.create_task(self._pump_log(proc.stderr), name="bfd-daemon-log")
        reason = "exited"
        try:
            self._tell()
            while line := await proc.stdout.readline():
                try:
                    peer, shown = messages.parse_event(line)
                except RuntimeError as exc:
                    reason = str(exc)
                    continue
                except (ValueError, KeyError, TypeError):
                    log.warning("bfd daemon said something unexpected", line=line[:200])
                    continue
                if peer in self._wanted:
                    self._set(peer, shown)
            await proc.wait()
            return f"{reason} (code {proc.returncode})"
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            logs.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await logs
            self._proc = None
            for peer in list(self._shown):
                self._set(peer, None)

    @staticmethod
    async def _pump_log(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            log.warning("bfd daemon", line=line.decode(errors="replace").rstrip())
