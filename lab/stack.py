"""Weir's processes in the lab network: backends' HTTP servers, BIRD, weir-controller on the
lab manifests, one weir-agent per load-balancer node; and the operations the demo performs.

Everything lives under one work directory (manifests, logs, each node's bpffs mount), so
`python -m weir.lab down` can remove what a killed run left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from weir.lab.netns import Host, Topology, cleanup_prefix, sh
from weir.lab.router import Router, Routing
from weir.lab.topology import BACKENDS, CONTROLLER, NODES, PORT, PREFIX, ROUTER_SERVER, VIP, LabNet

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "deploy" / "examples" / "lab"
WORKDIR = Path("/tmp") / f"{PREFIX}-lab"
BIN = Path(sys.executable).parent
CTL_PORT = 9443
SEED = 4242


class LabError(RuntimeError):
    pass


def agent_supports_bgp() -> bool:
    """Whether this weir-agent runs a BGP speaker (helper B's work, wired in by the agent)."""
    out = subprocess.run(
        [str(BIN / "weir-agent"), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    return "bgp" in out.lower()


@dataclass
class Stack:
    net: LabNet
    workdir: Path
    routing: Routing
    router: Router = field(init=False)
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)
    version: int = 0

    def __post_init__(self) -> None:
        self.router = Router(
            self.net.router, self.workdir / "bird", ROUTER_SERVER, VIP, self.routing, NODES
        )

    # -- start --------------------------------------------------------------------------------

    def start_backends(self) -> None:
        for name, host in self.net.backends.items():
            start_backend(host, name, PORT)

    def start_controller(self) -> None:
        manifests = self.workdir / "manifests"
        # Without BGP the agents need no peer (they would retry a router that is not there).
        skip = shutil.ignore_patterns("bgp.yaml") if self.routing == "static" else None
        shutil.copytree(MANIFESTS, manifests, ignore=skip)
        log = open(self.workdir / "controller.log", "ab")
        with log:
            self.net.ctl.popen(
                [str(BIN / "weir-controller"), "--plaintext", "--source", "file",
                 "--manifests", str(manifests), "--listen", f"0.0.0.0:{CTL_PORT}",
                 "--maglev-seed", str(SEED), "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip

    def bpffs(self, node: str) -> Path:
        return self.workdir / f"{node}-bpf" / "weir"

    def start_agent(self, node: str) -> None:
        mount = self.workdir / f"{node}-bpf"
        if mount not in self.mounts:
            # `ip netns exec` remounts /sys: each node gets its own bpffs outside it.
            mount.mkdir(parents=True, exist_ok=True)
            sh(["mount", "-t", "bpf", "bpf", str(mount)])
            self.mounts.append(mount)
        log = open(self.workdir / f"{node}.log", "ab")
        with log:
            self.agents[node] = self.net.nodes[node].popen(
                [str(BIN / "weir-agent"), "--controller", f"{CONTROLLER}:{CTL_PORT}",
                 "--plaintext", "--node", node, "--interface", "eth0", "--xdp-mode", "native",
                 "--bpffs", str(self.bpffs(node)), "--max-services", "16",
                 "--max-backends", "256", "--max-table-slots", "262144",
                 "--conntrack-entries", "65536", "--status-interval", "1",
                 "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.agent_env(),
            )  # fmt: skip

    def agent_env(self) -> dict[str, str]:
        """The agent's temporary files (its BGP speaker's config) go in the work directory."""
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        return {**os.environ, "TMPDIR": str(tmp)}

    def start_weir(self, progress=print) -> None:
        """weir-controller and the three agents; returns once every agent acked."""
        progress("starting weir-controller on deploy/examples/lab/")
        self.start_controller()
        progress("starting weir-agent on lb1, lb2, lb3 (the first start compiles the XDP program)")
        for node in NODES:
            self.start_agent(node)
        self.version = self.converge(timeout=90)

    def start(self, progress=print) -> None:
        progress("starting 4 backends (HTTP, VIP on lo)")
        self.start_backends()
        progress(f"starting BIRD on the router ({self.routing} ECMP)")
        self.router.start()
        self.start_weir(progress)
        if self.routing == "bgp" and not self.router.wait_next_hops(list(NODES), 30):
            progress("the router learned no BGP route from all three nodes: using a static route")
            self.routing = "static"
            self.router.use_static()
        if not self.router.wait_next_hops(list(NODES), 15):
            hops = self.router.next_hops()
            raise LabError(f"the router has no ECMP route over the nodes: {hops}")

    # -- observe ------------------------------------------------------------------------------

    def converge(self, min_version: int = 0, nodes: list[str] | None = None, timeout=30) -> int:
        """Wait until the nodes acked the controller's latest version; returns it."""
        nodes = list(self.agents) if nodes is None else nodes
        out = self.net.ctl.run(
            [sys.executable, "-m", "weir.lab.plane", "--controller", f"127.0.0.1:{CTL_PORT}",
             "--nodes", ",".join(nodes), "--min-version", str(min_version),
             "--timeout", str(timeout)],
            timeout=timeout + 30,
        )  # fmt: skip
        state = json.loads(out)
        if not state["converged"]:
            raise LabError(f"agents did not converge: {state} (logs in {self.workdir})")
        return int(state["version"])

    def new_flows(self, node: str) -> int:
        """New flows this node's XDP program has balanced (all services), from its maps."""
        from weir.nodeagent.dataplane.inspection import stats
        from weir.nodeagent.dataplane.pinned import PinnedMaps

        maps = PinnedMaps(self.bpffs(node))
        try:
            return sum(svc.new_flows for svc, _ in stats(maps)[0])
        finally:
            maps.close()

    def tracked_ports(self, node: str) -> set[int]:
        """Client ports of the flows this node's conntrack holds."""
        from weir.nodeagent.dataplane.inspection import ct_entries
        from weir.nodeagent.dataplane.pinned import PinnedMaps

        maps = PinnedMaps(self.bpffs(node))
        try:
            return {e.client_port for e in ct_entries(maps, None)[0] if e.live}
        finally:
            maps.close()

    def maglev_table(self, node: str) -> list[str]:
        """The active Maglev table of the node's (only) service, as backend addresses."""
        from weir.nodeagent.dataplane.inspection import nat_services
        from weir.nodeagent.dataplane.pinned import PinnedMaps

        maps = PinnedMaps(self.bpffs(node))
        try:
            (svc,) = nat_services(maps)
            names = {b.index: b.address for b in svc.backends}
            slots = maps.slots()[svc.base : svc.base + svc.table_size]
            return [names.get(int(i), "?") for i in slots]
        finally:
            maps.close()

    # -- change -------------------------------------------------------------------------------

    def fail_node(self, node: str) -> float:
        """A hard failure: agent killed, uplink down; the router then drops the next hop.
        Returns the seconds from the failure until the router's route lost the node."""
        t0 = time.monotonic()
        # Link first, as a node losing power: no FIN or NOTIFICATION reaches the router, which
        # notices when its BGP hold timer runs out.
        self.net.nodes[node].run(["ip", "link", "set", "eth0", "down"])
        proc = self.agents.pop(node)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if self.routing == "static":
            self.router.withdraw_static(node)
        rest = [n for n in NODES if n != node]
        if not self.router.wait_next_hops(rest, 30):
            raise LabError(f"the router did not converge: next hops {self.router.next_hops()}")
        return time.monotonic() - t0

    def restore_node(self, node: str) -> None:
        """Bring a failed node back: uplink up, a new agent (it adopts the pinned maps)."""
        self.net.nodes[node].run(["ip", "link", "set", "eth0", "up"])
        self.start_agent(node)
        self.version = self.converge(min_version=self.version)
        if self.routing == "static":
            self.router.use_static()
        if not self.router.wait_next_hops(list(NODES), 30):
            raise LabError(f"the router did not take {node} back: {self.router.next_hops()}")

    def set_backends(self, names: list[str]) -> int:
        """Rewrite the lab's EndpointSlice with these backends; wait for every agent's ack."""
        path = self.workdir / "manifests" / "endpointslices.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["endpoints"] = [
            {"addresses": [BACKENDS[n]], "conditions": {"ready": True}} for n in names
        ]
        tmp = path.with_name(f".{path.name}.tmp")  # atomic: never half a file
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.rename(path)
        self.version = self.converge(min_version=self.version + 1)
        return self.version

    def traffic(self, client: str, *args: str) -> subprocess.Popen:
        return self.net.clients[client].popen(
            [sys.executable, "-m", "weir.lab.traffic", *args, "--vip", VIP, "--port", str(PORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )

    def log_tail(self, lines: int = 20) -> str:
        return log_tails(self.workdir, ("controller", *NODES), lines)


def start_backend(host: Host, name: str, port: int, *, lines: bool = False) -> subprocess.Popen:
    """lab.httpd in host, answering with name (over HTTP, or each line with --lines); returns
    once it listens."""
    args = [sys.executable, "-m", "weir.lab.httpd", "--name", name, "--port", str(port)]
    proc = host.popen(args + ["--lines"] * lines, stdout=subprocess.PIPE, cwd=REPO)
    if "serving" not in read_line(proc.stdout, 10):
        raise LabError(f"backend {name} did not start")
    return proc


def log_tails(workdir: Path, names: Sequence[str], lines: int) -> str:
    """The last lines of each existing workdir/<name>.log, each under a header."""
    out = []
    for name in names:
        log = workdir / f"{name}.log"
        if log.exists():
            out.append(f"--- {log} (tail) ---")
            out += log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(out)


def read_line(stream, timeout: float) -> str:
    """One line from a child's pipe, or "" when none came in time (or it exited)."""
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode() if ready else ""


def teardown(
    topo: Topology | None,
    workdir: Path = WORKDIR,
    *,
    keep_files: bool = False,
    prefix: str = PREFIX,
    show_logs: Sequence[str] = (),
    log_lines: int = 20,
) -> None:
    """Remove everything the lab made: processes, namespaces, links, bpffs mounts (and so the
    pins in them), and the work directory unless keep_files. show_logs: print the tails of
    these logs in workdir first (once the processes are gone, so they are complete)."""
    if topo is not None:
        topo.close()
    cleanup_prefix(prefix)
    if show_logs:
        print(log_tails(workdir, show_logs, log_lines))
    for mount in lab_mounts(workdir):
        sh(["umount", "-l", mount], check=False)
    if not keep_files:
        shutil.rmtree(workdir, ignore_errors=True)


def lab_mounts(workdir: Path) -> list[str]:
    mounts = []
    with open("/proc/mounts") as f:
        for line in f:
            target = line.split()[1]
            if target.startswith(f"{workdir}/"):
                mounts.append(target)
    return mounts


def leftovers(workdir: Path = WORKDIR) -> list[str]:
    """What of the lab still exists (for tests and `down`): namespaces, links, mounts."""
    found = [
        f"netns {line.split()[0]}"
        for line in sh(["ip", "netns", "list"]).splitlines()
        if line.startswith(f"{PREFIX}-")
    ]
    for line in sh(["ip", "-o", "link", "show"]).splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            found.append(f"link {name}")
    found += [f"mount {m}" for m in lab_mounts(workdir)]
    return found
