"""Weir running in a topology: weir-controller (file source) in one host, a weir-agent on each
load-balancer node, all under one work directory the topology removes at close:

    <workdir>/manifests/        the controller's manifests
    <workdir>/<name>.log        each process's log ("controller", then the node names)
    <workdir>/<node>-bpf/weir   each node's pins, in a bpffs of its own
    <workdir>/<node>-bgp/       each node's ExaBGP config and API socket
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weir.lab import manifests
from weir.lab.netns import Host, LabError, Topology, kill_group
from weir.lab.plane import Convergence
from weir.lab.processes import AgentOptions, ControllerOptions

if TYPE_CHECKING:
    from weir.nodeagent.dataplane.pinned import PinnedMaps


@dataclass
class Deployment:
    topo: Topology
    workdir: Path
    ctl: Host  # the controller's host
    nodes: dict[str, Host]  # load-balancer nodes by name (the agents' --node)
    controller: ControllerOptions = field(default_factory=ControllerOptions)
    agent: AgentOptions = field(default_factory=AgentOptions)  # per node: start_agent()
    tail_lines: int = 0  # print each log's last lines at close (tests: shown on failure)
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)
    controller_proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.manifests.mkdir(exist_ok=True)
        if self.tail_lines:
            # Registered before any process starts, so it runs once they are all gone (the
            # logs are complete) and before the work directory goes.
            self.topo.defer(lambda: print(self.log_tail(self.tail_lines)))

    @property
    def manifests(self) -> Path:
        return self.workdir / "manifests"

    @property
    def port(self) -> int:
        return int(self.controller.listen.rsplit(":", 1)[1])

    def bpffs(self, node: str) -> Path:
        return self.workdir / f"{node}-bpf" / "weir"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- processes ----------------------------------------------------------------------------

    def write_manifests(self, name: str, docs: Sequence[Mapping[str, Any]]) -> None:
        manifests.write(self.manifests / name, docs)

    def start_controller(self) -> subprocess.Popen:
        opts = replace(self.controller, manifests=self.manifests)
        self.controller_proc = self.ctl.popen(opts.argv(), log=self.log("controller"))
        return self.controller_proc

    def stop_controller(self, sig: int = signal.SIGKILL, timeout: float = 20) -> int:
        """Signal the controller (a crash by default) and wait for it to exit; its status."""
        proc, self.controller_proc = self.controller_proc, None
        if proc is None:
            raise LabError("no controller running")
        kill_group(proc, sig)
        return proc.wait(timeout=timeout)

    def agent_options(self, node: str, **changes: Any) -> AgentOptions:
        return replace(
            self.agent,
            controller=f"{self.ctl.addr()}:{self.port}",
            node=node,
            bpffs=self.bpffs(node),
            bgp_workdir=self.workdir / f"{node}-bgp",
            **changes,
        )

    def start_agent(self, node: str, **changes: Any) -> subprocess.Popen:
        """Start node's agent; changes override its options (bgp_on_stop="restart", say)."""
        mount = self.bpffs(node).parent
        if not mount.is_mount():
            self.topo.bpffs(mount)
        proc = self.nodes[node].popen(
            self.agent_options(node, **changes).argv(), log=self.log(node)
        )
        self.agents[node] = proc
        return proc

    def stop_agent(self, node: str, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal node's agent and wait for it to exit; its exit status."""
        proc = self.agents.pop(node)
        kill_group(proc, sig)
        return proc.wait(timeout=timeout)

    def fail_node(self, node: str) -> None:
        """A hard failure, as a node losing power: uplink down first, so no FIN or
        NOTIFICATION leaves it, then its agent (and the agent's ExaBGP) killed."""
        self.nodes[node].set_link(self.agent.interface, False)
        self.stop_agent(node, signal.SIGKILL, timeout=10)

    def revive_node(self, node: str, **changes: Any) -> subprocess.Popen:
        """Uplink up and a new agent (it adopts the pinned maps)."""
        self.nodes[node].set_link(self.agent.interface, True)
        return self.start_agent(node, **changes)

    def converge(
        self, min_version: int = 0, nodes: Sequence[str] | None = None, timeout: float = 30
    ) -> Convergence:
        """Wait until the nodes (by default every running agent) acked the controller's
        latest version (>= min_version)."""
        nodes = list(self.agents) if nodes is None else list(nodes)
        out = self.ctl.run(
            [sys.executable, "-m", "weir.lab.plane", "--controller", f"127.0.0.1:{self.port}",
             "--nodes", ",".join(nodes), "--min-version", str(min_version),
             "--timeout", str(timeout)],
            timeout=timeout + 30,
        )  # fmt: skip
        state = Convergence(**json.loads(out))
        if not state.converged:
            raise LabError(f"agents did not converge: {json.dumps(asdict(state))[:2000]}")
        return state

    # -- what the data planes hold ------------------------------------------------------------

    @contextlib.contextmanager
    def maps(self, node: str) -> Iterator[PinnedMaps]:
        """node's pinned maps, read-only."""
        from weir.nodeagent.dataplane.pinned import PinnedMaps

        maps = PinnedMaps(self.bpffs(node))
        try:
            yield maps
        finally:
            maps.close()

    def new_flows(self, node: str, service: str | None = None) -> int:
        """Flows node's XDP program has taken on (conntrack misses: first packets, and flows
        moved to it from another node), for one service ("VIP:PORT/TCP") or all."""
        from weir.nodeagent.dataplane.inspection import stats

        with self.maps(node) as maps:
            rows = stats(maps)[0]
        return sum(c.new_flows for c, _ in rows if service is None or c.name == service)

    # -- logs ---------------------------------------------------------------------------------

    def log_events(self, name: str) -> list[dict]:
        """The JSON lines of a process's log."""
        events = []
        for line in self.log(name).read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the controller's and every node's log, each under a header."""
        out = []
        for name in ("controller", *self.nodes):
            if self.log(name).exists():
                out.append(f"--- {self.log(name)} (tail) ---")
                out += self.log(name).read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)
