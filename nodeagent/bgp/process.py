"""One run of ExaBGP 5: its configuration file, its API channel and the child process.

The speaker (nodeagent/bgp/speaker.py) supervises these: it starts one, drives it, and
starts another when it dies. ExaBGP reaches us through its API helper (relay.py), which
connects to a Unix socket in the work directory; commands go down that connection and
ExaBGP answers each with "done" or "error" (`exabgp.api.ack`), in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from weir.common.logs import get_logger
from weir.nodeagent.bgp.events import Answer, Message, parse_line
from weir.nodeagent.bgp.exabgp_main import KEEPALIVE_ENV
from weir.nodeagent.bgp.waiting import first_done

RELAY = Path(__file__).with_name("relay.py")
ENV = "/usr/bin/env"  # readable by everyone: see ExaBGPProcess.helper
EXABGP = Path(__file__).with_name("exabgp_main.py")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
STOP_TIMEOUT = 5.0  # for ExaBGP to send its Cease and exit after SIGTERM
log = get_logger("weir.bgp.exabgp")


class ExaBGPError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExaBGPOptions:
    """How to run ExaBGP. `prefix` runs it under another command (tests use
    `ip netns exec NAME` to put it in a node's namespace)."""

    command: Sequence[str] = (sys.executable, str(EXABGP))
    prefix: Sequence[str] = ()
    # Started as root, ExaBGP drops to this user once its API helper runs (the helper
    # stays root, so the API socket can stay root-only). None: keep the agent's user.
    user: str | None = "nobody"
    log_level: str = "WARNING"  # ExaBGP's own logging, relayed to ours
    start_timeout: float = 30.0  # until the API helper connects
    command_timeout: float = 10.0  # until ExaBGP answers a command
    env: dict[str, str] = field(default_factory=dict)  # extra exabgp.* settings


def _environment(opts: ExaBGPOptions, keepalive_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            KEEPALIVE_ENV: str(keepalive_path),
            # We supervise it: no daemonising, no CLI named pipes in /run shared by every
            # instance. drop=false starts the API helper before the privilege drop.
            "exabgp_daemon_daemonize": "false",
            "exabgp_daemon_drop": "false",
            "exabgp_daemon_user": opts.user or pwd.getpwuid(os.geteuid()).pw_name,
            "exabgp_api_cli": "false",
            "exabgp_api_ack": "true",
            "exabgp_log_destination": "stdout",
            "exabgp_log_level": opts.log_level,
            "exabgp_log_short": "true",
            "exabgp_log_statistics": "false",
            # Never read a host-wide /etc/exabgp/exabgp.env: what runs is what we set.
            "exabgp_envfile": "/nonexistent",
            "EXABGP_ENVFILE": "/nonexistent",
            "PYTHONUNBUFFERED": "1",  # its log lines reach us as they are written
        }
    )
    env.update(opts.env)
    return env


def _check_reachable(directory: Path, uid: int) -> None:
    """ExaBGP reloads its config as the unprivileged user: every directory on the way
    must let that user through, or the reload fails with no useful message."""
    for d in [directory, *directory.parents]:
        st = d.stat()
        if not (st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)):
            raise ExaBGPError(
                f"{d} (mode {stat.filemode(st.st_mode)}) keeps ExaBGP's unprivileged user "
                f"from its config in {directory}: choose another work directory"
            )


class ExaBGPProcess:
    def __init__(
        self, workdir: Path, opts: ExaBGPOptions, on_message: Callable[[Message], None]
    ) -> None:
        self.config_path = workdir / "exabgp.conf"
        self.keepalive_path = workdir / "keepalive.json"
        self.socket_path = workdir / "api.sock"
        self._opts = opts
        self._on_message = on_message
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()  # API connection closed
        self._pending: deque[asyncio.Future[bool]] = deque()
        self._tasks: list[asyncio.Task[None]] = []

    def helper(self) -> list[str]:
        """The `run` line of the API helper in ExaBGP's configuration. ExaBGP opens the
        program it names on every reload, by then as the unprivileged user: through
        /usr/bin/env, a checkout or venv that user cannot reach (a 0700 directory) still
        reloads, where naming our interpreter failed the reload and reset every session."""
        return [ENV, sys.executable, "-I", str(RELAY), str(self.socket_path)]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, config: str, keepalives: str) -> None:
        """Write the configuration (ExaBGP's, and the keepalive file of exabgp_main.py),
        start ExaBGP, return once its API helper is connected."""
        await asyncio.to_thread(self._write_config, config, keepalives)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._on_connect, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        argv = [*self._opts.prefix, *self._opts.command, "server", str(self.config_path)]
        # If the agent dies, ExaBGP must die with it (and close its sessions the way a
        # crash does, which is what graceful restart on the routers expects).
        if setpriv := shutil.which("setpriv"):
            argv = [setpriv, "--pdeathsig", "KILL", *argv]
        else:
            log.warning("no setpriv (util-linux): exabgp would outlive a killed agent")
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=_environment(self._opts, self.keepalive_path),
            start_new_session=True,  # our signals (Ctrl-C) do not reach it: we stop it
        )
        self._tasks.append(asyncio.create_task(self._pump_log(), name="exabgp-log"))
        log.info("exabgp started", pid=self._proc.pid, config=str(self.config_path))
        try:
            async with asyncio.timeout(self._opts.start_timeout):
                _, connected = await first_done(self._proc.wait(), self._connected.wait())
        except TimeoutError:
            timeout = self._opts.start_timeout
            raise ExaBGPError(f"exabgp's API helper did not connect in {timeout}s") from None
        if connected.cancelled():
            raise ExaBGPError(f"exabgp exited at start with code {self._proc.returncode}")

    def _write_config(self, config: str, keepalives: str) -> None:
        # The keepalive file first: sessions a reload re-establishes read it.
        self._write(self.keepalive_path, keepalives)
        self._write(self.config_path, config)

    def _write(self, path: Path, text: str) -> None:
        """Write a file so that ExaBGP can read it again after dropping privileges (a
        reload), and nobody else can: the config holds the MD5 keys."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o400)
        if os.geteuid() == 0 and self._opts.user:
            try:
                user = pwd.getpwnam(self._opts.user)
            except KeyError:
                raise ExaBGPError(f"no user {self._opts.user!r} for ExaBGP to run as") from None
            os.chown(tmp, user.pw_uid, user.pw_gid)
            path.parent.chmod(0o711)  # reachable, not listable
            _check_reachable(path.parent, user.pw_uid)
        tmp.replace(path)  # ExaBGP never reads a half-written file

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # only one helper per run; a second one is not ours
            writer.close()
            return
        self._writer = writer
        self._connected.set()
        try:
            while line := await reader.readline():
                msg = parse_line(line.decode(errors="replace"))
                if isinstance(msg, Answer):
                    if self._pending:
                        fut = self._pending.popleft()
                        if not fut.done():
                            fut.set_result(msg.ok)
                    continue
                self._on_message(msg)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._lost.set()
            while self._pending:
                fut = self._pending.popleft()
                if not fut.done():
                    fut.set_exception(ExaBGPError("API connection to exabgp lost"))

    async def _pump_log(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            text = _ANSI.sub("", line.decode(errors="replace")).rstrip()
            if text:
                log.info("exabgp", line=text)

    async def teardown(self, peer: str) -> bool:
        """Close an established session at once with a Cease NOTIFICATION, subcode 10
        "BFD Down" (RFC 9384): a router takes no NOTIFICATION for a graceful restart."""
        return await self.command(f"neighbor {peer} teardown 10")

    async def command(self, line: str) -> bool:
        """Send one API command; True when ExaBGP answered "done", False for "error"."""
        if self._writer is None or self._lost.is_set():
            raise ExaBGPError("no API connection to exabgp")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        self._writer.write(line.encode() + b"\n")
        try:
            await self._writer.drain()
            return await asyncio.wait_for(fut, self._opts.command_timeout)
        except TimeoutError:
            raise ExaBGPError(f"exabgp did not answer {line!r}") from None
        except ConnectionError as exc:
            raise ExaBGPError(f"API connection to exabgp lost: {exc}") from None

    async def reload(self, config: str, keepalives: str) -> bool:
        """Rewrite the configuration and have ExaBGP reload it: sessions whose settings did
        not change stay up, changed ones are re-established, new ones start."""
        await asyncio.to_thread(self._write_config, config, keepalives)
        if not await self.command("reload"):
            return False
        # A reload that fails also stops the API helper; then this is never answered.
        return await self.command("version")

    async def wait(self) -> str:
        """Until ExaBGP exits or its API connection is lost; says which."""
        assert self._proc is not None
        await first_done(self._proc.wait(), self._lost.wait())
        if self._proc.returncode is not None:
            return f"exabgp exited with code {self._proc.returncode}"
        return "API connection to exabgp lost"

    async def stop(self, notify_peers: bool) -> None:
        """End ExaBGP. notify_peers: SIGTERM, ExaBGP closes each session with a Cease
        NOTIFICATION and the peers drop our routes now. Otherwise SIGKILL: the sessions
        just close, as in a crash, and peers with graceful restart keep our routes."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if notify_peers else signal.SIGKILL)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("exabgp did not stop in time, killing it", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await self.close()

    async def close(self) -> None:
        """Release the socket and tasks (ExaBGP itself must be gone: see stop)."""
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
