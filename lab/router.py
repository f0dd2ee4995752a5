"""The lab's router: BIRD 2 in its own namespace, installing one ECMP route to the VIP.

Two ways to learn the VIP's next hops:
- static: a multipath static route over the load-balancer nodes; a node failure is shown
  by reconfiguring BIRD without that node, as a router's convergence would do;
- bgp: a session with each node's agent; the route follows their announcements.

Either way BIRD's kernel protocol merges the paths (`merge paths yes`) into one multipath
kernel route, and the namespace hashes flows on their ports (fib_multipath_hash_policy=1).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from weir.lab.netns import Host

Routing = Literal["static", "bgp"]
ROUTER_ASN = 64512
NODE_ASN = 64513


@dataclass
class Router:
    host: Host
    workdir: Path
    router_id: str
    vip: str
    routing: Routing
    nodes: dict[str, str]  # name -> address
    active: list[str] = field(default_factory=list)  # nodes in the static route
    proc: subprocess.Popen | None = None

    @property
    def sock(self) -> Path:
        return self.workdir / "bird.ctl"

    def config(self) -> str:
        lines = [
            f"router id {self.router_id};",
            f'log "{self.workdir / "bird.log"}" all;',
            "protocol device { scan time 2; }",
            "protocol kernel { ipv4 { export all; }; merge paths yes; }",
        ]
        if self.routing == "static":
            hops = " ".join(f"via {self.nodes[n]}" for n in self.active)
            if hops:
                lines.append(f"protocol static lab_vip {{ ipv4; route {self.vip}/32 {hops}; }}")
        else:
            for name, addr in self.nodes.items():
                lines.append(
                    f"protocol bgp {name} {{ local as {ROUTER_ASN}; neighbor {addr} as {NODE_ASN};"
                    " ipv4 { import all; export none; }; hold time 3; keepalive time 1;"
                    " connect delay time 1; connect retry time 2; error wait time 1, 3; }"
                )
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.active = list(self.nodes)
        self.host.run(["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"])
        (self.workdir / "bird.conf").write_text(self.config())
        self.proc = self.host.popen(
            ["bird", "-f", "-c", str(self.workdir / "bird.conf"), "-s", str(self.sock),
             "-P", str(self.workdir / "bird.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self.sock.exists() and "ready" in self.birdc("show", "status"), 15)

    def birdc(self, *args: str) -> str:
        proc = subprocess.run(
            ["birdc", "-s", str(self.sock), *args], capture_output=True, text=True, timeout=10
        )
        return proc.stdout

    def use_static(self) -> None:
        """Fall back to a static route over every node (BGP did not come up)."""
        self.routing = "static"
        self.active = list(self.nodes)
        (self.workdir / "bird.conf").write_text(self.config())
        self.birdc("configure")

    def withdraw_static(self, node: str) -> None:
        """Static mode: drop a node's next hop, as the router would once it saw it gone."""
        self.active = [n for n in self.active if n != node]
        (self.workdir / "bird.conf").write_text(self.config())
        self.birdc("configure")

    def next_hops(self) -> list[str]:
        """The node addresses of the router's kernel route to the VIP, in kernel order."""
        out = self.host.run(["ip", "-o", "route", "show", f"{self.vip}/32"], check=False)
        words = out.split()
        return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "via"]

    def wait_next_hops(self, nodes: Sequence[str], timeout: float) -> bool:
        want = sorted(self.nodes[n] for n in nodes)
        return wait_for(lambda: sorted(self.next_hops()) == want, timeout, fail=False)


def wait_for(check, timeout: float, *, fail: bool = True, step: float = 0.1) -> bool:
    """Poll check() until it holds (bounded). Used where no event exists to await: the state
    of another process (BIRD's socket, the kernel's route table)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    if fail:
        raise TimeoutError(f"not reached within {timeout:.0f} s")
    return False
