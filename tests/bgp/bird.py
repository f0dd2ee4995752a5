"""A BIRD 2 router in a network namespace, for tests: config, start/stop, and queries.

BIRD runs in the router host with its own config, control socket, pid file and log
(`bird -c CONF -s SOCK -P PID -f`), so it never touches the system's BIRD. Its kernel
protocol exports with `merge paths yes`, so routes from several equal BGP peers become one
multipath kernel route, and the namespace hashes flows on ports
(`fib_multipath_hash_policy=1`), as a real ECMP router in front of the LB nodes would.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from weir.lab.netns import Host

T = TypeVar("T")

# Test timers: retry quickly after a failure instead of BIRD's 60-300 s error wait, and
# try the first connection after 1 s instead of 5 s. BIRD's session timers (hold and
# keepalive) keep their defaults unless a peer sets them.
FAST_RETRY = "connect delay time 1; connect retry time 2; error wait time 1, 3;"


@dataclass(frozen=True)
class BirdPeer:
    name: str  # BIRD protocol name (letters, digits, underscore)
    address: str
    asn: int
    password: str = ""
    hold_time: int = 0  # 0 = BIRD's default (240 s)
    graceful_restart: bool = True
    local: str = ""  # the router's source address for this session ("" = any)


@dataclass
class Bird:
    host: Host
    workdir: Path
    router_id: str
    asn: int
    peers: Sequence[BirdPeer] = ()
    timers: str = FAST_RETRY
    proc: subprocess.Popen | None = None
    conf: Path = field(init=False)
    sock: Path = field(init=False)
    pidfile: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "bird.conf"
        self.sock = self.workdir / "bird.ctl"
        self.pidfile = self.workdir / "bird.pid"
        self.log = self.workdir / "bird.log"

    def config(self) -> str:
        lines = [
            f"router id {self.router_id};",
            f'log "{self.log}" all;',
            "debug protocols all;",
            "protocol device { scan time 2; }",
            # The kernel protocol installs the best routes, merged into multipath routes.
            "protocol kernel { ipv4 { export all; }; merge paths yes; }",
        ]
        for p in self.peers:
            opts = [
                f"local {p.local} as {self.asn};" if p.local else f"local as {self.asn};",
                f"neighbor {p.address} as {p.asn};",
                "ipv4 { import all; export none; };",
                self.timers,
            ]
            if p.password:
                opts.append(f'password "{p.password}";')
            if p.hold_time:
                opts.append(f"hold time {p.hold_time}; keepalive time {max(1, p.hold_time // 3)};")
            if p.graceful_restart:
                opts.append("graceful restart on;")
            lines.append(f"protocol bgp {p.name} {{ {' '.join(opts)} }}")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.host.run(["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"])
        self.conf.write_text(self.config())
        self.proc = self.host.popen(
            [
                "bird",
                "-c",
                str(self.conf),
                "-s",
                str(self.sock),
                "-P",
                str(self.pidfile),
                "-f",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.sock.exists() and self._ready(), 15, "bird control socket")

    def _ready(self) -> bool:
        return "ready" in self.birdc("show", "status", check=False)

    def kill(self) -> None:
        """Hard stop (SIGKILL), like a router crash: the sessions end without a
        NOTIFICATION. BIRD leaves its kernel routes behind; they are flushed here, as a
        rebooting router would lose them."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        # BIRD's kernel routes outlive a killed BIRD; flush them like a rebooted router.
        self.host.run(["ip", "route", "flush", "proto", "bird"], check=False)
        self.sock.unlink(missing_ok=True)

    def birdc(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["birdc", "-s", str(self.sock), *args], capture_output=True, text=True, timeout=10
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"birdc {' '.join(args)}: {proc.stderr or proc.stdout}")
        return proc.stdout

    def protocol(self, name: str) -> tuple[str, str, str]:
        """(state, since, info) of a protocol, e.g. ("up", "12:00:01.123", "Established")."""
        for line in self.birdc("show", "protocols", check=False).splitlines():
            parts = line.split(None, 5)
            if len(parts) >= 5 and parts[0] == name:
                return parts[3], parts[4], parts[5] if len(parts) > 5 else ""
        return "", "", ""

    def established(self, name: str) -> bool:
        return self.protocol(name)[2].startswith("Established")

    def established_before(self, name: str, moment: float) -> bool:
        """The session is Established, and has been since before `moment` (a time.time()).

        BIRD prints "since" as wall-clock time of day converted from its monotonic clock, so
        two reads of an unchanged session can differ by a millisecond: compare it with a
        moment, never with an earlier read."""
        _, since, info = self.protocol(name)
        if not info.startswith("Established"):
            return False
        h, m, s = since.split(":")
        started = int(h) * 3600 + int(m) * 60 + float(s)
        t = time.localtime(moment)
        at = t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec + moment % 1
        return 0 < (at - started) % 86400 < 3600  # modulo: midnight may fall in between

    def bgp_next_hops(self, prefix: str) -> set[str]:
        """Next hops of the BGP routes BIRD has for prefix (all paths, not only the best)."""
        out = self.birdc("show", "route", "for", prefix, "all", check=False)
        return set(re.findall(r"BGP\.next_hop: (\S+)", out))

    def protocol_detail(self, name: str) -> str:
        return self.birdc("show", "protocols", "all", name, check=False)

    def kernel_next_hops(self, prefix: str) -> set[str]:
        """Next hops of the kernel's route for prefix in the router namespace."""
        out = self.host.run(["ip", "-4", "route", "show", "exact", prefix], check=False)
        return set(re.findall(r"via (\S+)", out))


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll pred until it returns something truthy; AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(
    pred: Callable[[], T], limit: float, what: str, interval: float = 0.1
) -> T:
    """wait_until for async tests: pred runs in a thread (it may call birdc or ip)."""
    deadline = time.monotonic() + limit
    while True:
        value = await asyncio.to_thread(pred)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(interval)
