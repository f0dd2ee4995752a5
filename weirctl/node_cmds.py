"""weirctl node drain | undrain NODE: take a load-balancer node out of the routers' ECMP set
(its agent withdraws every route and keeps forwarding, so in-flight flows move to the other
nodes without breaking) and put it back.

The controller records the setting (Kubernetes: the Node annotation weir.dev/drain, durable
and the same on every replica; file source: in memory until it restarts) and publishes a
version carrying it. weirctl then waits, at most --timeout seconds, until the node's agent
reports it: draining with nothing announced, or no longer draining with its routes sent
again on every established session (what it then prints is what the routers were told).
"""

from __future__ import annotations

import argparse
import sys
import time

from weir.common.pb import pb
from weir.ctl.channel import add_tls_args, call
from weir.ctl.controller_cmds import TIMEOUT

POLL = 0.2  # seconds between ListAgents calls while waiting


def register(sub: argparse._SubParsersAction) -> None:
    node = sub.add_parser("node", help="operate load-balancer nodes")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    for name, drain, text in (
        ("drain", True, "withdraw the node's routes; it keeps forwarding"),
        ("undrain", False, "announce the node's routes again"),
    ):
        p = node_sub.add_parser(name, help=text)
        p.add_argument("node", help="the node's name")
        p.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait for the agent (0: no wait)"
        )
        add_tls_args(p)
        p.set_defaults(func=drain_cmd, drain=drain)


def drain_cmd(args: argparse.Namespace) -> int:
    verb = "drain" if args.drain else "undrain"
    resp = call(
        args,
        lambda s: s.SetNodeDrain(
            pb.SetNodeDrainRequest(node=args.node, drain=args.drain), timeout=TIMEOUT
        ),
    )
    if resp is None:
        return 1
    print(f"node {args.node}: {verb} published in version {resp.version}")
    if args.timeout <= 0:
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        agents = call(args, lambda s: s.ListAgents(pb.ListAgentsRequest(), timeout=TIMEOUT))
        if agents is None:
            return 1
        agent = next((a for a in agents.agents if a.node == args.node), None)
        if agent is None or not agent.connected:
            print(f"node {args.node}: no agent connected; it applies the setting when it connects")
            return 0
        if reached(agent, args.drain, resp.version):
            print(describe(agent))
            return 0
        if time.monotonic() >= deadline:
            print(
                f"weirctl: node {args.node}: the agent did not report the {verb} within "
                f"{args.timeout:g} s; last: {describe(agent)}",
                file=sys.stderr,
            )
            return 1
        time.sleep(POLL)


def reached(agent: pb.AgentInfo, drain: bool, version: int) -> bool:
    """The agent applied the version and reports the state asked for."""
    status = agent.status
    if agent.acked_version < version or status.applied_version < version:
        return False
    if drain:
        return status.draining and not status.announced
    return not status.draining and status.routes_settled


def describe(agent: pb.AgentInfo) -> str:
    status = agent.status
    state = "draining" if status.draining else "not draining"
    announced = ", ".join(status.announced) or "nothing"
    sessions = "; ".join(
        f"{s.peer} {s.state} {s.routes_sent} routes sent" for s in status.bgp_sessions
    )
    return (
        f"node {agent.node}: {state}, announcing {announced} (version {status.applied_version})"
        + (f"; sessions: {sessions}" if sessions else "")
    )
