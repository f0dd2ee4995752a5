"""weirctl bgp peers: every node's BGP sessions, as its agent last reported them, with the
BFD session beside each (its state and the intervals in use: how often the node sends, how
often the peer sends, and the silence after which the path counts as down).

The controller keeps each agent's last NodeStatus; `ListAgents` returns them. A session
of an agent that is no longer connected is shown with its last known state, marked stale.
"""

from __future__ import annotations

import argparse
import json

from google.protobuf import json_format
from weir.common.pb import pb
from weir.ctl.channel import add_tls_args, call
from weir.ctl.controller_cmds import TIMEOUT, age, table


def register(sub: argparse._SubParsersAction) -> None:
    bgp = sub.add_parser("bgp", help="BGP sessions of the load-balancer nodes")
    bgp_sub = bgp.add_subparsers(dest="bgp_command", required=True)
    p = bgp_sub.add_parser("peers", help="per node: peer, state, uptime, routes sent, BFD")
    p.add_argument("--node", help="only this node")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_tls_args(p)
    p.set_defaults(func=peers_cmd)


def peers_cmd(args: argparse.Namespace) -> int:
    resp = call(args, lambda s: s.ListAgents(pb.ListAgentsRequest(), timeout=TIMEOUT))
    if resp is None:
        return 1
    agents = [a for a in resp.agents if not args.node or a.node == args.node]
    if args.node and not agents:
        print(f"weirctl: no agent for node {args.node!r}")
        return 1
    print(peers_json(agents) if args.output == "json" else format_peers(agents))
    return 0


def format_peers(agents: list[pb.AgentInfo]) -> str:
    rows: list[tuple[str, str, str, str, str, str | int, str]] = []
    for a in agents:
        node = a.node + ("" if a.connected else " (stale)")
        if a.status.draining:
            node += " (draining)"
        if not a.status.bgp_sessions:
            rows.append((node, "-", "-", "no BGP peers", "-", "-", "-"))
        for s in a.status.bgp_sessions:
            uptime = age(s.uptime_seconds) if s.state == "established" else "-"
            rows.append((node, s.peer, s.address, s.state, uptime, s.routes_sent, bfd(s)))
    if not rows:
        return "no agents"
    return table(("NODE", "PEER", "ADDRESS", "STATE", "UPTIME", "ROUTES SENT", "BFD"), rows)


def bfd(s: pb.BGPSessionStatus) -> str:
    """ "up tx/rx/detect 100/100/300 ms", "down (control detection time expired)", "-"."""
    if not s.bfd_state:
        return "-"
    if s.bfd_state != "up":
        reason = s.bfd_diagnostic if s.bfd_diagnostic not in ("", "none") else ""
        return f"{s.bfd_state} ({reason})" if reason else s.bfd_state
    return f"up tx/rx/detect {s.bfd_transmit_ms}/{s.bfd_receive_ms}/{s.bfd_detect_ms} ms"


def peers_json(agents: list[pb.AgentInfo]) -> str:
    out = [
        {
            "node": a.node,
            "connected": a.connected,
            "draining": a.status.draining,
            "announced": list(a.status.announced),
            "sessions": [
                json_format.MessageToDict(
                    s,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
                for s in a.status.bgp_sessions
            ],
        }
        for a in agents
    ]
    return json.dumps(out, indent=2)
