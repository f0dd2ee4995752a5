"""Weir's processes in the lab network: backends' HTTP servers, BIRD, weir-controller on the
lab manifests, one weir-agent per load-balancer node; and the operations the demo performs.

Everything lives under one work directory (manifests, logs, each node's bpffs mount and
ExaBGP directory), so `python -m weir.lab down` can remove what a killed run left behind.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from weir.lab import manifests, traffic
from weir.lab.bird import Bird, peers_of
from weir.lab.client import Target
from weir.lab.deployment import Deployment
from weir.lab.processes import AgentOptions, ControllerOptions
from weir.lab.topology import (
    BACKENDS,
    BULK_POD_PORT,
    DNS_POD_PORT,
    DNS_PORT,
    NODES,
    POD_PORT,
    POD_VIP,
    PODS,
    PORT,
    PREFIX,
    ROUTER_SERVER,
    VIP,
    WORKERS,
    LabNet,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "deploy" / "examples" / "lab"
WORKDIR = Path("/tmp") / f"{PREFIX}-lab"
SEED = 4242
METRICS = "127.0.0.1:9478"  # each agent's /metrics, in its node's namespace
ROUTER_ASN, NODE_ASN = 64512, 64513  # as deploy/examples/lab/bgp.yaml says
HOLD = 3  # seconds, the router's side of the lab's short BGP timers
TARGET = Target(VIP, PORT, "http")
POD_TARGET = Target(POD_VIP, PORT, "http")
VIPS = (VIP, POD_VIP)
Routing = Literal["static", "bgp"]


@dataclass
class Stack:
    net: LabNet
    workdir: Path
    routing: Routing
    weir: Deployment = field(init=False)
    router: Bird = field(init=False)
    version: int = 0

    def __post_init__(self) -> None:
        self.weir = Deployment(
            self.net.topo,
            self.workdir,
            self.net.ctl,
            {**self.net.nodes, **self.net.workers},
            controller=ControllerOptions(maglev_seed=SEED),
            agent=AgentOptions(metrics_address=METRICS, metrics_per_backend=True),
        )
        self.router = Bird(
            self.net.router,
            self.workdir / "bird",
            ROUTER_SERVER,
            ROUTER_ASN,
            peers_of(NODES, NODE_ASN, hold_time=HOLD, graceful_restart=False)
            if self.routing == "bgp"
            else (),
            static={f"{v}/32": list(NODES.values()) for v in VIPS}
            if self.routing == "static"
            else {},
        )

    # -- start --------------------------------------------------------------------------------

    def start_backends(self) -> None:
        for name, host in self.net.backends.items():
            traffic.serve(host, name, PORT)
            # UDP answers leave from the address the socket is bound to: the VIP, for DSR
            traffic.serve_bulk(host, BULK_POD_PORT, udp_port=DNS_PORT, udp_bind=VIP)
        for name, host in self.net.pods.items():
            traffic.serve(host, name, POD_PORT)
            traffic.serve_bulk(host, BULK_POD_PORT, udp_port=DNS_POD_PORT)

    def start_weir(self, progress: Callable[[str], None] = print) -> None:
        """weir-controller and the three agents; returns once every agent acked."""
        progress("starting weir-controller on deploy/examples/lab/")
        # Without BGP the agents need no peer (they would retry a router that is not there).
        skip = shutil.ignore_patterns("bgp.yaml") if self.routing == "static" else None
        shutil.copytree(MANIFESTS, self.weir.manifests, ignore=skip, dirs_exist_ok=True)
        self.weir.start_controller()
        progress(
            "starting weir-agent on lb1, lb2, lb3 (XDP) and on the workers n1, n2, n3 (tc); "
            "the first start compiles the programs"
        )
        for node in (*NODES, *WORKERS):
            self.weir.start_agent(node)
        self.version = self.weir.converge(timeout=90).version

    def start(self, progress: Callable[[str], None] = print) -> None:
        progress("starting 4 backends (HTTP, VIP on lo) and 6 pods (HTTP on 8080, no VIP)")
        self.start_backends()
        progress(f"starting BIRD on the router ({self.routing} ECMP)")
        self.router.start()
        self.start_weir(progress)
        if self.routing == "bgp":
            try:
                self.wait_next_hops(NODES, 30)
            except TimeoutError:
                progress("the router learned no BGP route from all three nodes: static route")
                self.routing = "static"
                for vip in VIPS:
                    self.router.set_static(f"{vip}/32", list(NODES.values()))
        self.wait_next_hops(NODES, 15)

    @contextlib.contextmanager
    def weir_paused(self) -> Iterator[None]:
        """Weir out of the path, for a baseline on the same network: the agents killed (a
        crash leaves their programs attached, and a running agent would put a detached one
        back) and the programs detached; afterwards the agents start again, attach them
        from their pins and ack the current version."""
        from weir.nodeagent.dataplane.nat import PROG_PINS, TC_HANDLE

        names = list(self.weir.agents)
        for name in names:
            self.weir.stop_agent(name, signal.SIGKILL)
        dev = self.weir.agent.interface
        for node in self.net.nodes.values():
            node.run(["ip", "link", "set", "dev", dev, "xdp", "off"])
        for worker in self.net.workers.values():
            for _pin, point, priority in PROG_PINS.values():
                where = "ingress" if point == 1 else "egress"
                spec = ["dev", dev, where, "prio", str(priority), "handle", hex(TC_HANDLE)]
                worker.run(["tc", "filter", "del", *spec, "bpf"], check=False)
        try:
            yield
        finally:
            for name in names:
                self.weir.start_agent(name)
            self.weir.converge(timeout=60)

    # -- observe ------------------------------------------------------------------------------

    def next_hops(self) -> list[str]:
        """The node addresses of the router's kernel route to the VIP."""
        return sorted(self.router.kernel_next_hops(f"{VIP}/32"))

    def wait_next_hops(self, nodes: Collection[str], timeout: float) -> None:
        for vip in VIPS:
            self.router.wait_kernel_next_hops(f"{vip}/32", [NODES[n] for n in nodes], timeout)

    def tracked_ports(self, node: str) -> set[int]:
        """Client ports of the flows this node's conntrack holds."""
        from weir.nodeagent.dataplane.inspection import ct_entries

        with self.weir.maps(node) as maps:
            return {e.client_port for e in ct_entries(maps, None)[0] if e.live}

    def maglev_table(self, node: str, vip: str = VIP, port: int = PORT) -> list[str]:
        """The active Maglev table of the service vip:port, as backend addresses."""
        from weir.nodeagent.dataplane.inspection import nat_services

        with self.weir.maps(node) as maps:
            (svc,) = [s for s in nat_services(maps) if (s.record.vip, s.record.port) == (vip, port)]
            names = {b.index: b.address for b in svc.backends}
            slots = maps.slots()[svc.base : svc.base + svc.table_size]
            return [names.get(int(i), "?") for i in slots]

    def pod_peers(self) -> set[str]:
        """The client addresses the pods' established connections come from (ss in each
        pod: what the pods' own stacks see)."""
        peers = set()
        for pod in self.net.pods.values():
            out = pod.run(["ss", "-Htn", "state", "established", f"( sport = :{POD_PORT} )"])
            peers |= {line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line}
        return peers

    # -- change -------------------------------------------------------------------------------

    def fail_node(self, node: str) -> float:
        """A hard failure (uplink down, agent killed); the router then drops the next hop.
        Returns the seconds from the failure until the router's route lost the node."""
        t0 = time.monotonic()
        # No FIN or NOTIFICATION reaches the router: with BGP it notices when its hold timer
        # runs out; the static route is reconfigured, as the router's convergence would do.
        self.weir.fail_node(node)
        rest = [n for n in NODES if n != node]
        if self.routing == "static":
            for vip in VIPS:
                self.router.set_static(f"{vip}/32", [NODES[n] for n in rest])
        self.wait_next_hops(rest, 30)
        return time.monotonic() - t0

    def restore_node(self, node: str) -> None:
        """Bring a failed node back: uplink up, a new agent (it adopts the pinned maps)."""
        self.weir.revive_node(node)
        self.version = self.weir.converge(min_version=self.version).version
        if self.routing == "static":
            for vip in VIPS:
                self.router.set_static(f"{vip}/32", list(NODES.values()))
        self.wait_next_hops(NODES, 30)

    def set_backends(self, names: Sequence[str]) -> int:
        """Rewrite the web Service's EndpointSlice with these backends; wait for every
        agent's ack."""
        return self._set_endpoints(
            "web-lab", [{"addresses": [BACKENDS[n]], "conditions": {"ready": True}} for n in names]
        )

    def set_pods(self, names: Sequence[str]) -> int:
        """The same for the shop Service's pods."""
        return self._set_endpoints(
            "shop-lab",
            [
                {"addresses": [PODS[n][1]], "nodeName": PODS[n][0], "conditions": {"ready": True}}
                for n in names
            ],
        )

    def _set_endpoints(self, slice_name: str, endpoints: list[dict]) -> int:
        path = self.weir.manifests / "endpointslices.yaml"
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            if doc["metadata"]["name"] == slice_name:
                doc["endpoints"] = endpoints
        manifests.write(path, docs)
        self.version = self.weir.converge(min_version=self.version + 1).version
        return self.version
