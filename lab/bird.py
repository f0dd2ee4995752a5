"""A BIRD 2 router in a host: config, start/kill, and queries (for the lab and the tests).

BIRD runs with its own config, control socket, pid file and log under a work directory
(`bird -c CONF -s SOCK -P PID -f`), so it never touches the system's BIRD. The router learns
routes from BGP peers, from static routes, or both. Its kernel protocol exports with
`merge paths yes`, so equal routes (several BGP peers, or a static route's next hops) become
one multipath kernel route, and the host hashes flows on their ports
(`fib_multipath_hash_policy=1`), as a real ECMP router in front of LB nodes would.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from weir.lab.netns import Host, LabError, kill_group
from weir.lab.wait import wait_until

# Retry quickly after a failure instead of BIRD's 60-300 s error wait, and try the first
# connection after 1 s instead of 5 s. BIRD's session timers (hold and keepalive) keep their
# defaults unless a peer sets them.
FAST_RETRY = "connect delay time 1; connect retry time 2; error wait time 1, 3;"


@dataclass(frozen=True)
class BirdPeer:
    name: str  # BIRD protocol name (letters, digits, underscore)
    address: str
    asn: int
    password: str = ""
    hold_time: int = 0  # 0 = BIRD's default (240 s); keepalive is a third of it
    graceful_restart: bool = True
    local: str = ""  # the router's source address for this session ("" = any)
    bfd: bool = False  # the session follows a BFD session with the peer (Bird.bfd's timers)


@dataclass(frozen=True)
class BirdBFD:
    """BIRD's `protocol bfd` timers for every interface (milliseconds)."""

    min_rx_ms: int = 100
    min_tx_ms: int = 100
    multiplier: int = 3
    # Sessions of BFD's own, which no BGP session follows (the others come from `bfd on`).
    neighbors: tuple[str, ...] = ()

    def config(self) -> str:
        neighbors = " ".join(f"neighbor {n};" for n in self.neighbors)
        return (
            f'protocol bfd {{ interface "*" {{ min rx interval {self.min_rx_ms} ms; '
            f"min tx interval {self.min_tx_ms} ms; multiplier {self.multiplier}; }}; "
            f"{neighbors} }}"
        )


@dataclass(frozen=True)
class BirdBFDSession:
    """One line of `show bfd sessions`."""

    address: str
    interface: str
    state: str  # Up, Down, Init, AdminDown
    since: str  # when it entered that state
    interval: float  # seconds: how often BIRD sends
    timeout: float  # seconds: BIRD's detection time


@dataclass
class Bird:
    host: Host
    workdir: Path
    router_id: str
    asn: int
    peers: Sequence[BirdPeer] = ()
    static: dict[str, list[str]] = field(default_factory=dict)  # prefix -> next hops
    timers: str = FAST_RETRY
    bfd: BirdBFD | None = None  # `protocol bfd`, for the peers with bfd=True
    # Scheduling priority of every BIRD thread: a lab router shares the machine's CPUs
    # with the nodes, where a real one has its own (tests that load the CPUs raise it).
    nice: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def conf(self) -> Path:
        return self.workdir / "bird.conf"

    @property
    def sock(self) -> Path:
        return self.workdir / "bird.ctl"

    @property
    def log(self) -> Path:
        return self.workdir / "bird.log"

    def config(self) -> str:
        lines = [
            f"router id {self.router_id};",
            f'log "{self.log}" all;',
            "debug protocols all;",
            "protocol device { scan time 2; }",
            # The kernel protocol installs the best routes, merged into multipath routes.
            "protocol kernel { ipv4 { export all; }; merge paths yes; }",
        ]
        routes = " ".join(
            f"route {prefix} {' '.join(f'via {hop}' for hop in hops)};"
            for prefix, hops in self.static.items()
            if hops
        )
        if routes:
            lines.append(f"protocol static {{ ipv4; {routes} }}")
        if self.bfd is not None:
            lines.append(self.bfd.config())
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
            if p.bfd:
                opts.append("bfd on;")
            lines.append(f"protocol bgp {p.name} {{ {' '.join(opts)} }}")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start BIRD; returns once it answers on its control socket."""
        self.host.sysctl({"net.ipv4.fib_multipath_hash_policy": 1})
        self.conf.write_text(self.config())
        self.proc = self.host.popen(
            ["bird", "-c", str(self.conf), "-s", str(self.sock),
             "-P", str(self.workdir / "bird.pid"), "-f"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self.sock.exists() and self._ready(), 15, "BIRD's control socket")
        if self.nice:
            self.renice()

    def renice(self) -> None:
        """Apply `nice` to every thread of BIRD (its BFD runs in one of its own)."""
        for pid in self.host.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "bird":
                    continue
                for task in Path(f"/proc/{pid}/task").iterdir():
                    os.setpriority(os.PRIO_PROCESS, int(task.name), self.nice)
            except (OSError, ValueError):
                pass  # gone meanwhile

    def _ready(self) -> bool:
        return "ready" in self.birdc("show", "status", check=False)

    def kill(self) -> None:
        """Hard stop (SIGKILL), like a router crash: the sessions end without a
        NOTIFICATION. BIRD's kernel routes outlive it; they are flushed here, as a rebooting
        router would lose them."""
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc)
            self.proc.wait(timeout=10)
        self.proc = None
        self.host.run(["ip", "route", "flush", "proto", "bird"], check=False)
        self.sock.unlink(missing_ok=True)

    def set_static(self, prefix: str, hops: Sequence[str]) -> None:
        """Route prefix over these next hops (none: no static route), and reconfigure."""
        self.static[prefix] = list(hops)
        self.conf.write_text(self.config())
        self.birdc("configure")

    def birdc(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["birdc", "-s", str(self.sock), *args], capture_output=True, text=True, timeout=10
        )
        if check and proc.returncode != 0:
            raise LabError(f"birdc {' '.join(args)}: {proc.stderr or proc.stdout}")
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

    def protocol_detail(self, name: str) -> str:
        return self.birdc("show", "protocols", "all", name, check=False)

    def bfd_sessions(self) -> dict[str, BirdBFDSession]:
        """`show bfd sessions`, by neighbour address."""
        out = {}
        for line in self.birdc("show", "bfd", "sessions", check=False).splitlines():
            parts = line.split()
            if len(parts) < 6 or not _is_address(parts[0]):
                continue  # a header
            interval, timeout = float(parts[-2]), float(parts[-1])
            out[parts[0]] = BirdBFDSession(
                parts[0], parts[1], parts[2], parts[3], interval, timeout
            )
        return out

    def bgp_next_hops(self, prefix: str) -> set[str]:
        """Next hops of the BGP routes BIRD has for prefix (all paths, not only the best)."""
        out = self.birdc("show", "route", "for", prefix, "all", check=False)
        return set(re.findall(r"BGP\.next_hop: (\S+)", out))

    def communities(self, prefix: str) -> set[str]:
        """Communities on the BGP routes BIRD has for prefix, as Weir writes them:
        "65000:100" (standard) and "65000:1:2" (large)."""
        out = self.birdc("show", "route", "for", prefix, "all", check=False)
        found = set()
        for values in re.findall(r"BGP\.(?:community|large_community): (.*)", out):
            for value in re.findall(r"\(([^)]*)\)", values):
                found.add(":".join(re.split(r",\s*", value)))
        return found

    def hold_timer(self, name: str) -> tuple[float, int]:
        """(seconds left, hold time) of a session's hold timer: each message from the peer
        (a keepalive when it has nothing else to say) sets it back to the hold time, less
        up to 25% (BIRD jitters it)."""
        m = re.search(r"Hold timer:\s+([\d.]+)/(\d+)", self.protocol_detail(name))
        if m is None:
            raise LabError(f"no hold timer for {name} (session not established?)")
        return float(m.group(1)), int(m.group(2))

    def kernel_next_hops(self, prefix: str) -> set[str]:
        """Next hops of the kernel's route for prefix in the router's host."""
        out = self.host.run(["ip", "-4", "route", "show", "exact", prefix], check=False)
        return set(re.findall(r"via (\S+)", out))

    def wait_kernel_next_hops(
        self, prefix: str, hops: Collection[str], timeout: float, interval: float = 0.05
    ) -> None:
        """Until the kernel's route for prefix goes over exactly these next hops."""
        want = set(hops)
        try:
            wait_until(
                lambda: self.kernel_next_hops(prefix) == want,
                timeout,
                f"{prefix} via {sorted(want)}",
                interval,
            )
        except TimeoutError as exc:
            now = sorted(self.kernel_next_hops(prefix))
            raise TimeoutError(f"{exc}; the route goes via {now}") from None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def peers_of(nodes: Mapping[str, str], asn: int, **options: object) -> list[BirdPeer]:
    """One BGP peer per node (name -> address), all alike."""
    return [BirdPeer(name, addr, asn, **options) for name, addr in nodes.items()]  # type: ignore[arg-type]
