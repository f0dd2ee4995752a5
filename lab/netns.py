"""Networks of hosts in network namespaces, built by simple calls and always torn down.

Used by the lab, the tests and the benchmarks. Every name carries the topology's prefix so
that parallel topologies do not collide, and everything created (namespaces, bridges, links,
processes, bpffs mounts, work directories) is recorded as it is made: `close()` removes
exactly that, newest first, also after a failure half-way through building.

    with Topology("wt1") as topo:
        lan = topo.bridge("lan")
        router = topo.host("router", forwarding=True)
        topo.link(router, lan, "10.99.0.1/24")
        client = topo.host("client")
        topo.link(client, lan, "10.99.0.2/24")
        client.route("default", "10.99.0.1")
        client.run(["ping", "-c1", "10.99.0.1"])

A bridge can live in a host too (pods bridged on a node), and `wire` joins two hosts
point to point (a node and a routed pod, a router and its uplink).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weir.lab import bpffs

IFNAMSIZ = 15  # longest interface name the kernel takes
CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    """Something the harness built or started is not in the state it should be."""


class NetnsError(LabError):
    """A command run by the harness failed."""


def sh(
    args: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
) -> str:
    """Run a command, return its stdout; raise NetnsError with stderr when it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a child started in its own session, and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@dataclass(frozen=True)
class Bridge:
    """A Linux bridge acting as an L2 switch, in the root namespace or in a host."""

    name: str
    host: Host | None = None


@dataclass(eq=False)
class Host:
    """A network namespace standing for one machine."""

    topo: Topology
    name: str  # full namespace name, prefix included
    ifaces: dict[str, str] = field(default_factory=dict)  # iface name -> "addr/len"
    routes: dict[str, list[str]] = field(default_factory=dict)  # dst -> `ip route` spec

    def cmd(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> str:
        return sh(self.cmd(args), check=check, timeout=timeout, input=input)

    def popen(
        self, args: Sequence[str], *, log: Path | None = None, **kwargs: Any
    ) -> subprocess.Popen:
        """Start a long-running process in this host (its own session); close() kills it.
        log: append its stdout and stderr to this file."""
        kwargs.setdefault("start_new_session", True)
        if log is None:
            return self.topo.started(subprocess.Popen(self.cmd(args), **kwargs))
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.cmd(args), stdout=out, stderr=subprocess.STDOUT, **kwargs)
        return self.topo.started(proc)

    def addr(self, iface: str | None = None) -> str:
        """The IP address (no prefix length) of an interface, the first one by default."""
        cidr = self.ifaces[iface] if iface else next(iter(self.ifaces.values()))
        return cidr.split("/")[0]

    def mac(self, iface: str) -> str:
        return self.run(["cat", f"/sys/class/net/{iface}/address"]).strip()

    def add_address(self, cidr: str, dev: str) -> None:
        """An address on dev; interface addresses are remembered for addr()."""
        self.run(["ip", "addr", "add", cidr, "dev", dev])
        if dev != "lo":
            self.ifaces.setdefault(dev, cidr)

    def set_link(self, iface: str, up: bool) -> None:
        """Down drops the routes through iface (the kernel does); up puts them back, as a
        machine's network configuration does when its link returns."""
        self.run(["ip", "link", "set", iface, "up" if up else "down"])
        if up:
            for dst, spec in self.routes.items():
                self.run(["ip", "route", "replace", dst, *spec], check=False)

    def sysctl(self, settings: Mapping[str, object]) -> None:
        for key, value in settings.items():
            self.run(["sysctl", "-qw", f"{key}={value}"])

    def route(self, dst: str, *via: str, dev: str | None = None) -> None:
        """Add or replace the route to dst ("default" or a CIDR): through one gateway, over
        several (one ECMP route), or straight out of dev."""
        spec: list[str] = []
        if len(via) == 1:
            spec = ["via", via[0]]
        else:
            spec = [w for hop in via for w in ("nexthop", "via", hop)]
        if dev is not None:
            spec += ["dev", dev]
        self.run(["ip", "route", "replace", dst, *spec])
        self.routes[dst] = spec

    def nft(self, rules: str) -> None:
        """Load an nftables ruleset (`nft -f` syntax) into this host; it goes with it."""
        self.run(["nft", "-f", "-"], input=rules)

    def veth(self, a: str, b: str) -> None:
        """A veth pair inside this host, both ends up."""
        self.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        for dev in (a, b):
            self.set_link(dev, True)

    def pids(self) -> list[int]:
        out = sh(["ip", "netns", "pids", self.name], check=False).split()
        return [int(p) for p in out if p.isdigit()]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the calling thread in this namespace (bcc and netlink calls in-process)."""
        with in_netns(self.name):
            yield


@dataclass(eq=False)
class Topology:
    """Everything one lab, test or benchmark builds, removed at close()."""

    prefix: str
    hosts: list[Host] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # root-namespace veth ends, oldest first
    _undo: list[Callable[[], object]] = field(default_factory=list)
    _names: int = 0

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def defer(self, undo: Callable[[], object]) -> None:
        """Run undo at close(), before whatever was recorded earlier is removed."""
        self._undo.append(undo)

    def _name(self, kind: str) -> str:
        self._names += 1
        return f"{self.prefix}{kind}{self._names}"[:IFNAMSIZ]

    def host(
        self, name: str, *, forwarding: bool = False, sysctls: Mapping[str, object] | None = None
    ) -> Host:
        full = f"{self.prefix}-{name}"
        sh(["ip", "netns", "add", full])
        host = Host(self, full)
        self.hosts.append(host)
        self.defer(lambda: _remove_netns(full))
        host.set_link("lo", True)
        host.sysctl({"net.ipv4.ip_forward": 1} if forwarding else {})
        host.sysctl(sysctls or {})
        return host

    def bridge(self, name: str, *, host: Host | None = None) -> Bridge:
        """A bridge in the root namespace, or inside host (it goes with the host)."""
        full = f"{self.prefix}{name}"[:IFNAMSIZ]
        ip = ["ip"] if host is None else ["ip", "-n", host.name]
        sh([*ip, "link", "add", full, "type", "bridge"])
        if host is None:
            self.defer(lambda: sh(["ip", "link", "del", full], check=False))
        sh([*ip, "link", "set", full, "up"])
        return Bridge(full, host)

    def link(
        self, host: Host, bridge: Bridge, cidr: str | None = None, *, iface: str = "eth0"
    ) -> str:
        """Plug host into bridge with a veth pair; the host's end is named iface. Returns the
        bridge-side end (the switch port)."""
        port = self._name("v")
        ip = ["ip"] if bridge.host is None else ["ip", "-n", bridge.host.name]
        sh([*ip, "link", "add", port, "type", "veth", "peer", "name", iface, "netns", host.name])
        if bridge.host is None:
            self.links.append(port)
            # Namespace teardown is asynchronous in the kernel: deleting the root end at
            # close() means a check right after finds nothing left.
            self.defer(lambda: sh(["ip", "link", "del", port], check=False))
        sh([*ip, "link", "set", port, "master", bridge.name, "up"])
        host.set_link(iface, True)
        if cidr:
            host.add_address(cidr, iface)
        return port

    def wire(
        self,
        a: Host,
        b: Host,
        a_cidr: str | None,
        b_cidr: str | None,
        *,
        a_iface: str = "eth1",
        b_iface: str = "eth1",
    ) -> None:
        """A point-to-point veth between two hosts (it goes with them)."""
        tmp = self._name("t")
        sh(["ip", "link", "add", tmp, "netns", a.name, "type", "veth",
            "peer", "name", b_iface, "netns", b.name])  # fmt: skip
        a.run(["ip", "link", "set", tmp, "name", a_iface])
        for h, iface, cidr in ((a, a_iface, a_cidr), (b, b_iface, b_cidr)):
            h.set_link(iface, True)
            if cidr:
                h.add_address(cidr, iface)

    def started(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Record a process started in its own session: close() kills its group."""

        def kill() -> None:
            if proc.poll() is None:
                kill_group(proc)
                proc.wait(timeout=10)

        self.defer(kill)
        return proc

    def bpffs(self, mount: Path) -> Path:
        """A bpffs mounted at mount (created); unmounted, pins and all, at close()."""
        bpffs.mount(mount)
        self.defer(lambda: bpffs.unmount(mount))
        return mount

    def workdir(self, path: Path | None = None) -> Path:
        """A work directory (a new temporary one by default), removed at close(). Other
        users can pass through it: ExaBGP reads its config there as an unprivileged user."""
        if path is None:
            path = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        else:
            path.mkdir(parents=True)
        path.chmod(0o711)
        self.defer(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def close(self) -> None:
        """Remove everything recorded, newest first. Safe to call twice; one failing step
        does not stop the others."""
        while self._undo:
            undo = self._undo.pop()
            with contextlib.suppress(Exception):
                undo()
        self.hosts.clear()
        self.links.clear()


def _remove_netns(name: str) -> None:
    # Processes started by other means (`ip netns exec` from a test) die with the namespace.
    for pid in sh(["ip", "netns", "pids", name], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    sh(["ip", "netns", "del", name], check=False)


def _prefixed_netns(prefix: str) -> list[str]:
    names = (line.split()[0] for line in sh(["ip", "netns", "list"], check=False).splitlines())
    return [n for n in names if n.startswith(f"{prefix}-")]


def _prefixed_links(prefix: str) -> list[str]:
    found = []
    for line in sh(["ip", "-o", "link", "show"], check=False).splitlines():
        parts = line.split(":")
        if len(parts) > 1 and (name := parts[1].strip().split("@")[0]).startswith(prefix):
            found.append(name)
    return found


def _processes_using(workdir: Path) -> list[tuple[int, str]]:
    """Processes started on a file in workdir (an ExaBGP that escaped its namespace, say):
    one of their arguments is a path there."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if any(a.startswith(f"{workdir}/") for a in argv):
                    found.append((int(proc.name), " ".join(argv).strip()))
    return found


def leftovers(prefix: str, workdir: Path | None = None) -> list[str]:
    """What of a topology with this prefix (and work directory) still exists: namespaces,
    root-namespace links, bpffs mounts, the work directory, processes using it."""
    found = [f"netns {n}" for n in _prefixed_netns(prefix)]
    found += [f"link {n}" for n in _prefixed_links(prefix)]
    if workdir is not None:
        found += [f"mount {m}" for m in bpffs.mounts_under(workdir)]
        found += [f"process {pid} {cmd}" for pid, cmd in _processes_using(workdir)]
        if workdir.exists():
            found.append(f"directory {workdir}")
    return found


def cleanup_prefix(prefix: str, workdir: Path | None = None) -> None:
    """Remove what an earlier run that was killed before it could clean up left behind."""
    for name in _prefixed_netns(prefix):
        _remove_netns(name)
    for name in _prefixed_links(prefix):
        sh(["ip", "link", "del", name], check=False)
    if workdir is not None:
        for mount in bpffs.mounts_under(workdir):
            bpffs.unmount(mount)
        shutil.rmtree(workdir, ignore_errors=True)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread in network namespace `name` (netns is per thread)."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(back)
        os.close(target)
        os.close(back)
