"""weir-agent: programs this node's data planes from the controller's node view.

    weir-agent --controller ctl:9443 --interface eth0 --tls-ca ca.pem --tls-cert node.pem \\
               --tls-key node.key
    weir-agent --controller ctl:9443 --interface eth0 --tls-ca bundle.pem \\
               --token-file /var/run/secrets/weir/token      # a node certificate for the token
    weir-agent --controller 127.0.0.1:9443 --interface eth0 --plaintext --bpffs /run/weir/bpf

At start it says what the node offers (nodeagent/preflight.py: kernel, headers for bcc, BTF,
bpffs, the uplink's XDP, capabilities) and what is missing, with the fix.

It runs on every node. The view says which roles the node has: load balancer (XDP on the
uplink, BGP) and backend (tc translation to the node's own endpoints); each role's data
plane is opened the first time the node has that role (nodeagent.lb_role,
nodeagent.backend_role).

SIGTERM/SIGINT stop the agent cleanly and leave the programs attached and the maps pinned:
forwarding goes on, and the next agent adopts them without rewriting what is already right.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
import sys
from pathlib import Path

from weir.common import logs
from weir.common.aio import Generation
from weir.common.lifecycle import run_until_stopped
from weir.common.version import VERSION
from weir.nodeagent import preflight
from weir.nodeagent.agent import Agent
from weir.nodeagent.backend_macs import BackendMacs
from weir.nodeagent.backend_role import BackendRole
from weir.nodeagent.bgp import AgentBGP, BGPSpeaker
from weir.nodeagent.controller_client import ControllerClient, Identity
from weir.nodeagent.dataplane import Dataplane, DataplaneConfig, DataplaneError
from weir.nodeagent.dataplane.hcpath import HcPath
from weir.nodeagent.dataplane.layout import PROG_PIN
from weir.nodeagent.dataplane.nat import NatConfig, NatDataplane
from weir.nodeagent.dataplane.nat_pinned import has_nat_pins
from weir.nodeagent.flows import FlowLog, FlowRelay
from weir.nodeagent.health.checker import HealthChecker
from weir.nodeagent.identity import TLSConfig, TokenIdentity, bootstrap_target
from weir.nodeagent.lb_role import LoadBalancerRole
from weir.nodeagent.maglev import TableCache
from weir.nodeagent.neighbors import NeighborResolver
from weir.nodeagent.status import StatusReporter
from weir.nodeagent.uplink import Uplink

log = logs.get_logger("weir.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="weir-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"weir-agent {VERSION}")
    p.add_argument("--controller", required=True, help="controller address host:port")
    p.add_argument("--node", default=socket.gethostname(), help="this node's name (hostname)")
    p.add_argument("--interface", required=True, help="uplink: XDP and tc attach here")
    p.add_argument("--xdp-mode", choices=["auto", "native", "generic"], default="auto")
    p.add_argument("--bpffs", type=Path, default=Path("/sys/fs/bpf/weir"), help="pin directory")
    sizes = p.add_argument_group("map sizes (data-plane defaults when omitted)")
    sizes.add_argument("--max-services", type=int)
    sizes.add_argument("--max-backends", type=int)
    sizes.add_argument("--max-table-slots", type=int)
    sizes.add_argument("--conntrack-entries", type=int)
    sizes.add_argument(
        "--max-lb-nodes", type=int, help="backend role: load-balancer nodes accepted from"
    )
    sizes.add_argument(
        "--max-local-backends", type=int, help="backend role: translations to local endpoints"
    )
    sizes.add_argument(
        "--nat-flows", type=int, help="backend role: flows whose replies are translated back"
    )
    tls = p.add_argument_group("controller connection")
    tls.add_argument("--plaintext", action="store_true", help="no TLS (tests, loopback)")
    tls.add_argument("--tls-ca", type=Path, help="CA certificate that signed the controller's")
    tls.add_argument("--tls-cert", type=Path, help="this node's client certificate")
    tls.add_argument("--tls-key", type=Path, help="this node's client key")
    tls.add_argument("--tls-server-name", help="name expected in the controller certificate")
    tls.add_argument(
        "--token-file",
        type=Path,
        help="the Pod's projected ServiceAccount token: trade it for a node certificate "
        "(instead of --tls-cert/--tls-key)",
    )
    tls.add_argument(
        "--bootstrap",
        help="the controller's bootstrap address for --token-file (default: the "
        "--controller host, port 9445)",
    )
    nb = p.add_argument_group("backend neighbours")
    nb.add_argument("--neighbor-timeout", type=float, default=1.0, help="seconds per resolution")
    nb.add_argument("--neighbor-retry", type=float, default=2.0, help="retry unresolved, seconds")
    nb.add_argument("--neighbor-refresh", type=float, default=30.0, help="re-verify MACs, seconds")
    bgp = p.add_argument_group("BGP (peers and VIPs come from the controller)")
    bgp.add_argument(
        "--bgp-on-stop",
        choices=["drain", "restart"],
        default="drain",
        help="on SIGTERM: drain (withdraw, forward for --drain-grace, exit) or restart "
        "(keep the routes at graceful-restart peers for the next agent)",
    )
    bgp.add_argument("--drain-grace", type=float, default=10.0, help="seconds, see --bgp-on-stop")
    bgp.add_argument(
        "--bgp-workdir", type=Path, help="ExaBGP's config and API socket (/run/weir/bgp/NODE)"
    )
    flows = p.add_argument_group("flow log (weirctl flows)")
    flows.add_argument(
        "--flow-sample",
        type=int,
        default=0,
        help="log 1 in N VIP packets' load-balancing decisions (0: off, the default)",
    )
    flows.add_argument(
        "--flows-address",
        default="",
        help="serve the flow log to weirctl flows on host:port (off when empty; keep it on "
        "loopback: the records carry client addresses)",
    )
    sizes.add_argument(
        "--max-health-checks",
        type=int,
        default=4096,
        help="load-balancer role: backends checked at once (health-check paths)",
    )
    p.add_argument("--status-interval", type=float, default=10.0, help="NodeStatus period, s")
    p.add_argument("--metrics-address", help="serve Prometheus /metrics on host:port")
    p.add_argument(
        "--metrics-per-backend",
        action="store_true",
        help="traffic counters per backend too (one series per backend: see docs/METRICS.md)",
    )
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    tls_files = (args.tls_ca, args.tls_cert, args.tls_key)
    if args.plaintext and (any(tls_files) or args.token_file):
        p.error("--plaintext excludes --tls-ca/--tls-cert/--tls-key/--token-file")
    if args.token_file and (args.tls_cert or args.tls_key or not args.tls_ca):
        p.error("--token-file goes with --tls-ca (the controller's CA bundle), not --tls-cert")
    if not args.plaintext and not args.token_file and not all(tls_files):
        p.error("give --tls-ca with --tls-cert and --tls-key or --token-file, or --plaintext")
    return args


def identity(args: argparse.Namespace) -> Identity | None:
    """The agent's identity towards the controller (None: --plaintext)."""
    if args.plaintext:
        return None
    if args.token_file:
        return TokenIdentity(
            args.node,
            args.token_file,
            args.tls_ca,
            args.bootstrap or bootstrap_target(args.controller),
            server_name=args.tls_server_name,
        )
    return TLSConfig(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def report(checks: list[preflight.Check]) -> None:
    """What the node offers, in one line, then each missing piece with its fix."""
    log.info("node checked", **{c.name.replace(" ", "_"): c.found for c in checks})
    for c in checks:
        if not c.ok:
            say = log.warning if c.required else log.info
            say(f"missing: {c.name}", found=c.found, fix=c.fix)
        elif c.fix:
            log.info(f"note: {c.name}", found=c.found, note=c.fix)


def dataplane_config(args: argparse.Namespace) -> DataplaneConfig:
    sizes = {
        k: getattr(args, k)
        for k in ("max_services", "max_backends", "max_table_slots", "conntrack_entries")
        if getattr(args, k) is not None
    }
    return DataplaneConfig(
        interface=args.interface,
        bpffs=args.bpffs,
        xdp_mode=args.xdp_mode,
        flow_sample=args.flow_sample,
        **sizes,
    )


def nat_config(args: argparse.Namespace) -> NatConfig:
    flags = {  # NatConfig field -> flag
        "max_lb_nodes": "max_lb_nodes",
        "max_local_backends": "max_local_backends",
        "flows": "nat_flows",
    }
    sizes = {field: getattr(args, f) for field, f in flags.items() if getattr(args, f) is not None}
    return NatConfig(interface=args.interface, bpffs=args.bpffs, **sizes)


async def run(args: argparse.Namespace) -> int:
    tls = identity(args)
    log.info("weir-agent starting", version=VERSION, node=args.node, interface=args.interface)
    report(await asyncio.to_thread(preflight.local_checks, args.interface, args.bpffs))
    xdp, nat = dataplane_config(args), nat_config(args)
    try:
        xdp.validate()
        nat.validate()
    except DataplaneError as exc:
        log.error("bad data-plane settings", error=str(exc))
        return 2
    metrics = None
    if args.metrics_address:
        from weir.nodeagent.agent_metrics import PromMetrics

        metrics = PromMetrics(args.node)
        metrics.serve(args.metrics_address)
    async with (
        Uplink(args.interface) as uplink,
        NeighborResolver(args.interface, timeout=args.neighbor_timeout) as resolver,
    ):
        # Bumped by whatever changes the NodeStatus: the reporter sends one soon after.
        changes = Generation()
        bgp = AgentBGP(
            BGPSpeaker(
                workdir=args.bgp_workdir or Path("/run/weir/bgp") / args.node,
                on_change=changes.bump,
            ),
            on_stop=args.bgp_on_stop,
            grace_seconds=args.drain_grace,
        )
        lb = LoadBalancerRole(
            functools.partial(Dataplane.open, xdp),
            BackendMacs(resolver, uplink),
            uplink=uplink,
            pinned=(args.bpffs / PROG_PIN).exists(),
            tables=TableCache(),
            bgp=bgp,
            changes=changes,
            retry=args.neighbor_retry,
            refresh=args.neighbor_refresh,
        )
        backend = BackendRole(
            functools.partial(NatDataplane.open, nat),
            uplink,
            pinned=has_nat_pins(args.bpffs),
            changes=changes,
        )
        health = HealthChecker(
            functools.partial(HcPath.open, args.interface, args.max_health_checks),
            BackendMacs(resolver, uplink),
            changes,
            refresh=args.neighbor_retry,
        )
        agent = Agent([lb, backend], bgp=bgp, metrics=metrics, changes=changes, health=health)
        if metrics:
            metrics.collect_traffic(
                args.bpffs, lambda: agent.service_names, per_backend=args.metrics_per_backend
            )
        flow_log = FlowLog(args.bpffs, lambda: agent.service_names, sample=args.flow_sample)
        client = ControllerClient(
            args.controller,
            args.node,
            agent.handle,
            tls=tls,
            flows=lambda: FlowRelay(flow_log),
        )
        reporter = StatusReporter(
            agent.status, client.report_status, changes, interval=args.status_interval
        )
        tasks = {
            "controller": client.run(),
            "status": reporter.run(),
            "roles": agent.run(),
            "flows": flow_log.run(args.flows_address),
        }
        await bgp.start()
        log.info("agent started", node=args.node, controller=args.controller)
        code = await run_until_stopped(log, tasks, shutdown=agent.shutdown)
        log.info("stopped: the data planes stay attached and pinned")
        return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
