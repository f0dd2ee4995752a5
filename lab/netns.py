"""Build small networks of hosts in network namespaces, and always tear them down.

Used by the tests and by the lab. Every name is prefixed so that parallel topologies
do not collide, and everything created is recorded so `close()` removes exactly that,
also after a failure half-way through building.

    with Topology("wt1") as topo:
        br = topo.bridge("lan")
        client = topo.host("client")
        topo.link(client, br, "10.99.0.2/24")
        client.run(["ping", "-c1", "10.99.0.1"])
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


class NetnsError(RuntimeError):
    pass


def sh(args: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command, return its stdout; raise NetnsError with stderr when it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclass
class Host:
    """A network namespace standing for one machine."""

    topo: Topology
    name: str  # full namespace name, prefix included
    ifaces: dict[str, str] = field(default_factory=dict)  # iface name -> "addr/len"

    def cmd(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
        return sh(self.cmd(args), check=check, timeout=timeout)

    def popen(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a long-running process in this host; close() kills it."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.cmd(args), **kwargs)
        self.topo.processes.append(proc)
        return proc

    def addr(self, iface: str | None = None) -> str:
        """The IP address (no prefix length) of an interface, the first one by default."""
        cidr = self.ifaces[iface] if iface else next(iter(self.ifaces.values()))
        return cidr.split("/")[0]

    def mac(self, iface: str) -> str:
        return self.run(["cat", f"/sys/class/net/{iface}/address"]).strip()


@dataclass
class Topology:
    prefix: str
    hosts: list[Host] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # root-namespace veth ends
    _links: int = 0

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str, *, forwarding: bool = False) -> Host:
        full = f"{self.prefix}-{name}"
        sh(["ip", "netns", "add", full])
        host = Host(self, full)
        self.hosts.append(host)
        host.run(["ip", "link", "set", "lo", "up"])
        if forwarding:
            host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        return host

    def bridge(self, name: str) -> str:
        """A Linux bridge in the root namespace acting as an L2 switch."""
        full = f"{self.prefix}{name}"[:15]
        sh(["ip", "link", "add", full, "type", "bridge"])
        self.bridges.append(full)
        sh(["ip", "link", "set", full, "up"])
        return full

    def link(self, host: Host, bridge: str, cidr: str | None, *, iface: str = "eth0") -> str:
        """Connect host to bridge with a veth pair; the host side is named iface."""
        self._links += 1
        outer = f"{self.prefix}v{self._links}"[:15]
        sh(["ip", "link", "add", outer, "type", "veth", "peer", "name", iface, "netns", host.name])
        self.links.append(outer)
        sh(["ip", "link", "set", outer, "master", bridge, "up"])
        host.run(["ip", "link", "set", iface, "up"])
        if cidr:
            host.run(["ip", "addr", "add", cidr, "dev", iface])
            host.ifaces[iface] = cidr
        return iface

    def wire(
        self,
        a: Host,
        b: Host,
        a_cidr: str,
        b_cidr: str,
        *,
        a_iface: str = "eth1",
        b_iface: str = "eth1",
    ) -> None:
        """A point-to-point veth between two hosts."""
        tmp = f"{self.prefix}t{len(self.hosts)}{self._links}"[:15]
        self._links += 1
        sh(
            [
                "ip",
                "link",
                "add",
                tmp,
                "netns",
                a.name,
                "type",
                "veth",
                "peer",
                "name",
                b_iface,
                "netns",
                b.name,
            ]
        )
        a.run(["ip", "link", "set", tmp, "name", a_iface])
        for h, iface, cidr in ((a, a_iface, a_cidr), (b, b_iface, b_cidr)):
            h.run(["ip", "link", "set", iface, "up"])
            h.run(["ip", "addr", "add", cidr, "dev", iface])
            h.ifaces[iface] = cidr

    def close(self) -> None:
        """Kill processes, delete namespaces and bridges. Safe to call twice."""
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self.processes.clear()
        for host in self.hosts:
            # Processes started by other means (ip netns exec from a test) die with this.
            pids = sh(["ip", "netns", "pids", host.name], check=False).split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", host.name], check=False)
        self.hosts.clear()
        # Namespace teardown is asynchronous in the kernel: delete our veths now so a
        # caller that checks right after close() finds nothing left.
        for link in self.links:
            sh(["ip", "link", "del", link], check=False)
        self.links.clear()
        for br in self.bridges:
            sh(["ip", "link", "del", br], check=False)
        self.bridges.clear()


def cleanup_prefix(prefix: str) -> None:
    """Remove leftovers of an earlier run that was killed before it could clean up."""
    for line in sh(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(f"{prefix}-"):
            for pid in sh(["ip", "netns", "pids", name], check=False).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", name], check=False)
    for line in sh(["ip", "-o", "link", "show"], check=False).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                sh(["ip", "link", "del", name], check=False)
