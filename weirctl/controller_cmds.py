"""weirctl snapshot | agents | errors: the controller's view, over its inspection RPCs
(channel and TLS options: weirctl/channel.py).

Names and messages come from the cluster: text output escapes every character that is not
printable (control characters, bidirectional overrides), so nothing reaches the terminal as
a control sequence. JSON output escapes them already.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format
from weir.common.pb import pb, pb_grpc
from weir.ctl.channel import add_tls_args, call

STRATEGIES = {pb.STRATEGY_MAGLEV: "maglev", pb.STRATEGY_RANDOM: "random"}
AFFINITY = {pb.SESSION_AFFINITY_NONE: "none", pb.SESSION_AFFINITY_CLIENT_IP: "client-ip"}
FORWARDING = {pb.FORWARDING_L2_DSR: "l2", pb.FORWARDING_ENCAP: "encap"}
TIMEOUT = 10.0


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_tls_args(common)

    p = sub.add_parser("snapshot", parents=[common], help="the controller's current snapshot")
    p.add_argument(
        "--node", help="the view of one node (its roles, local endpoints, services and BGP)"
    )
    p.add_argument(
        "--backends", action="store_true", help="list every backend, with its forwarding mode"
    )
    p.set_defaults(func=snapshot_cmd)
    p = sub.add_parser("agents", parents=[common], help="connected agents and acked versions")
    p.set_defaults(func=agents_cmd)
    p = sub.add_parser("errors", parents=[common], help="objects rejected as bad input")
    p.set_defaults(func=errors_cmd)


def _json(message: Any) -> str:
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def printable(value: object) -> str:
    """str(value) with every control character escaped (\\n, \\x1b, ...): names and messages
    come from manifests and agents, and must not move the cursor or recolour the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart, like kubectl."""
    cells = [[printable(h) for h in headers]] + [[printable(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _show(
    args: argparse.Namespace,
    rpc: Callable[[pb_grpc.NodePlaneStub], Any],
    text: Callable[[Any], str],
) -> int:
    """One inspection RPC, printed as JSON (-o json) or as text(response)."""
    resp = call(args, rpc)
    if resp is None:
        return 1
    if args.output == "json":
        print(_json(resp))  # JSON escapes control characters itself
    else:  # table() cleans its cells; this catches the rest, line by line
        print("\n".join(map(printable, text(resp).split("\n"))))
    return 0


def snapshot_cmd(args: argparse.Namespace) -> int:
    if args.node:
        request = pb.GetNodeSnapshotRequest(node=args.node)
        return _show(
            args,
            lambda s: s.GetNodeSnapshot(request, timeout=TIMEOUT),
            lambda snap: format_node_snapshot(snap, args.backends),
        )
    return _show(
        args,
        lambda s: s.GetSnapshot(pb.GetSnapshotRequest(), timeout=TIMEOUT),
        lambda snap: format_cluster_snapshot(snap, args.backends),
    )


def format_cluster_snapshot(snap: pb.ClusterSnapshot, backends: bool = False) -> str:
    lbs = sum(1 for v in snap.node_views if v.config.load_balancer)
    head = (
        f"version {snap.version}  hash {snap.hash[:12]}  maglev seed {snap.maglev_seed}  "
        f"services {len(snap.services)}  nodes {len(snap.node_views)} "
        f"(load balancers {lbs})  nodes with BGP {len(snap.nodes)}"
    )
    parts = [head, "", format_services(snap.services, backends)]
    if snap.node_views:
        rows: list[tuple[object, ...]] = [
            (
                v.node,
                v.config.address or "-",
                _roles(v.config),
                len(v.config.local_endpoints),
                ",".join(v.config.lb_node_addresses) or "-",
            )
            for v in snap.node_views
        ]
        headers = ("NODE", "ADDRESS", "ROLES", "LOCAL ENDPOINTS", "ACCEPTS FROM")
        parts += ["", table(headers, rows)]
    if snap.nodes:
        rows = [_bgp_row(n.node, n.bgp) for n in snap.nodes]
        parts += ["", table(("NODE", "ASN", "ROUTER ID", "PEERS", "ANNOUNCES"), rows)]
    return "\n".join(parts)


def format_node_snapshot(snap: pb.Snapshot, backends: bool = False) -> str:
    config = snap.node_config
    head = (
        f"node {printable(snap.node)}  version {snap.version}  hash {printable(snap.hash[:12])}  "
        f"maglev seed {snap.maglev_seed}  services {len(snap.services)}"
    )
    roles = (
        f"roles: {_roles(config)}  address {config.address or '-'}  "
        f"encap port {config.encap_port or '-'}"
    )
    parts = [head, roles]
    if config.local_endpoints:
        parts.append(
            f"accepts encapsulated packets from: {', '.join(config.lb_node_addresses) or '-'}"
        )
        rows = [(e.service_id, _address(e.address, e.target_port)) for e in config.local_endpoints]
        parts += ["", table(("FRONTEND", "LOCAL ENDPOINT"), rows)]
    parts += ["", format_services(snap.services, backends), ""]
    bgp = snap.bgp
    if not bgp.local_asn:
        parts.append("BGP: none (no BGPPeer selects this node)")
        return "\n".join(parts)
    parts.append(f"BGP: local AS {bgp.local_asn}  router id {printable(bgp.router_id)}")
    peers = [
        (
            p.name,
            p.address,
            p.asn,
            p.port,
            f"{p.hold_time_seconds}s/{p.keepalive_time_seconds}s",
            "yes" if p.password else "no",
            "yes" if p.graceful_restart else "no",
        )
        for p in bgp.peers
    ]
    parts.append(table(("PEER", "ADDRESS", "ASN", "PORT", "HOLD/KEEPALIVE", "MD5", "GR"), peers))
    if bgp.advertisements:
        adverts = [
            (
                a.prefix,
                ",".join(a.communities) or "-",
                a.local_preference or "-",
                ",".join(a.peers) or "all",
            )
            for a in bgp.advertisements
        ]
        parts += ["", table(("PREFIX", "COMMUNITIES", "LOCAL PREF", "PEERS"), adverts)]
    return "\n".join(parts)


def format_services(services: Sequence[pb.Service], backends: bool) -> str:
    if not services:
        return "no services"
    rows = []
    for s in services:
        ready = sum(1 for b in s.backends if b.ready)
        rows.append(
            (
                s.id,
                s.service,
                s.port_name or "-",
                STRATEGIES.get(s.strategy, "?"),
                s.maglev_table_size,
                AFFINITY.get(s.session_affinity, "?"),
                f"{ready}/{len(s.backends)}",
            )
        )
    headers = ("FRONTEND", "SERVICE", "PORT", "STRATEGY", "TABLE", "AFFINITY", "READY")
    out = table(headers, rows)
    if backends:
        brows = [
            (
                s.id,
                _address(b.address, b.port),
                b.weight,
                b.node or "-",
                FORWARDING.get(b.forwarding, "-"),
                b.node_address or "-",
                _state(b),
            )
            for s in services
            for b in s.backends
        ]
        headers = ("FRONTEND", "BACKEND", "WEIGHT", "NODE", "MODE", "VIA", "STATE")
        out += "\n\n" + table(headers, brows)
    return out


def _address(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _roles(config: pb.NodeConfig) -> str:
    roles = [
        name
        for name, on in (
            ("load-balancer", config.load_balancer),
            ("backend", bool(config.local_endpoints)),
        )
        if on
    ]
    return ",".join(roles) or "-"


def _state(b: pb.Backend) -> str:
    flags = [n for n, on in (("ready", b.ready), ("serving", b.serving)) if on]
    if b.terminating:
        flags.append("terminating")
    return ",".join(flags) or "-"


def _bgp_row(node: str, bgp: pb.BGPConfig) -> tuple[object, ...]:
    peers = ",".join(f"{p.name}({p.address} AS{p.asn})" for p in bgp.peers) or "-"
    return (node, bgp.local_asn, bgp.router_id, peers, len(bgp.advertisements))


def agents_cmd(args: argparse.Namespace) -> int:
    return _show(
        args, lambda s: s.ListAgents(pb.ListAgentsRequest(), timeout=TIMEOUT), format_agents
    )


def format_agents(resp: pb.ListAgentsResponse, now: float | None = None) -> str:
    now = time.time() if now is None else now
    head = f"controller version {resp.version}  agents {len(resp.agents)}"
    if not resp.agents:
        return head + "\n\nno agents"
    rows = [
        (
            a.node + (" (draining)" if a.status.draining else ""),
            "yes" if a.connected else "no",
            a.sent_version,
            a.acked_version,
            resp.version - a.acked_version,
            len(a.service_errors) + (1 if a.error else 0),
            a.status.applied_version if a.HasField("status") else "-",
            age(now - a.connected_unix),
            a.agent_version or "-",
            a.peer,
        )
        for a in resp.agents
    ]
    headers = (
        "NODE", "CONNECTED", "SENT", "ACKED", "LAG", "ERRORS", "APPLIED", "SINCE", "AGENT", "PEER",
    )  # fmt: skip
    parts = [head, "", table(headers, rows)]
    problems = [(a.node, "(version)", a.error) for a in resp.agents if a.error]
    problems += [(a.node, e.service_id, e.message) for a in resp.agents for e in a.service_errors]
    if problems:
        parts += ["", table(("NODE", "SERVICE", "ERROR"), problems)]
    return "\n".join(parts)


def age(seconds: float) -> str:
    """A duration as kubectl shows ages: 45s, 3m, 2h, 5d."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def errors_cmd(args: argparse.Namespace) -> int:
    return _show(
        args, lambda s: s.ListErrors(pb.ListErrorsRequest(), timeout=TIMEOUT), format_errors
    )


def format_errors(resp: pb.ListErrorsResponse) -> str:
    if not resp.errors:
        return "no errors"
    rows = [(e.kind, e.namespace or "-", e.name, e.message) for e in resp.errors]
    return table(("KIND", "NAMESPACE", "NAME", "MESSAGE"), rows)
