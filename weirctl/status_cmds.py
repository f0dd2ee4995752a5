"""weirctl status: Weir at a glance, like `cilium status`: the controller (release, replicas,
leader, Kubernetes), every node's agent (role from the node's view, release, acked version,
lag, data plane, map usage, nacks), BGP sessions per node, pools, every problem with its
node and reason, and a one-line verdict. `-o json` for scripts. Exit status 0 when healthy,
1 otherwise (or when the controller cannot be asked).

In a cluster, from inside the controller's Pod (no client certificate needed there):

    kubectl -n weir-system exec deploy/weir-controller -- \\
        weirctl --controller unix:///run/weir/controller.sock status
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from weir.common.pb import pb, pb_grpc
from weir.ctl.channel import add_tls_args, call
from weir.ctl.controller_cmds import TIMEOUT, age, printable, table
from weir.ctl.status_model import Status, evaluate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="Weir at a glance: controller, agents, BGP, pools, verdict")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_tls_args(p)
    p.set_defaults(func=status_cmd)


def gather(stub: pb_grpc.NodePlaneStub) -> Status:
    controller = stub.GetControllerStatus(pb.GetControllerStatusRequest(), timeout=TIMEOUT)
    agents = stub.ListAgents(pb.ListAgentsRequest(), timeout=TIMEOUT)
    try:
        snapshot = stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=TIMEOUT)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE:  # UNAVAILABLE: none published yet
            raise
        snapshot = None
    return evaluate(controller, agents, snapshot)


def to_json(status: Status) -> str:
    def message(m: Message) -> dict[str, Any]:
        return json_format.MessageToDict(
            m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    return json.dumps(
        {
            "healthy": status.healthy,
            "verdict": status.verdict,
            "version": status.version,
            "controller": message(status.controller),
            "agents": [dataclasses.asdict(a) for a in status.agents],
            "bgp_sessions": [dataclasses.asdict(s) for s in status.sessions],
            "pools": [message(p) for p in status.pools],
            "problems": [dataclasses.asdict(p) for p in status.problems],
        },
        indent=2,
    )


def to_text(status: Status) -> str:
    c = status.controller
    replicas = (
        f"{c.replicas.ready}/{c.replicas.desired} ready" if c.replicas.known else "1 (this one)"
    )
    leader = c.leader or ("-" if c.leader_election else "this replica")
    parts = [
        f"Weir: {status.verdict}",
        "",
        f"Controller:  {c.version}  replicas {replicas}  leader {leader}  source {c.source or '-'}"
        + (f"  Kubernetes {c.kubernetes_version}" if c.kubernetes_version else ""),
        f"Agents:      {len(status.agents)}  serves releases {c.agent_versions}  "
        f"snapshot version {status.version}",
        "",
    ]
    rows: list[Sequence[object]] = [
        (
            a.node,
            a.roles,
            "yes" if a.connected else "no",
            a.agent_version,
            a.acked,
            a.lag,
            a.dataplane,
            a.maps,
            a.nacks,
        )
        for a in status.agents
    ]
    headers = ("NODE", "ROLE", "CONNECTED", "AGENT", "ACKED", "LAG", "DATAPLANE", "MAPS", "NACKS")
    parts.append(table(headers, rows) if rows else "no agents")
    if status.sessions:
        rows = [
            (
                s.node,
                s.peer,
                s.address,
                s.state,
                age(s.uptime_seconds) if s.state == "established" else "-",
                s.routes_sent,
            )
            for s in status.sessions
        ]
        parts += ["", table(("NODE", "BGP PEER", "ADDRESS", "STATE", "UPTIME", "ROUTES"), rows)]
    if status.pools:
        rows = [
            (p.name, p.assigned, p.available, "; ".join(p.conditions) or "-") for p in status.pools
        ]
        parts += ["", table(("POOL", "ASSIGNED", "AVAILABLE", "CONDITIONS"), rows)]
    if status.problems:
        rows = [(p.node or "(controller)", p.reason) for p in status.problems]
        parts += ["", table(("WHERE", "PROBLEM"), rows)]
    return "\n".join(map(printable, "\n".join(parts).split("\n")))


def status_cmd(args: argparse.Namespace) -> int:
    status = call(args, gather)
    if status is None:
        return 1
    print(to_json(status) if args.output == "json" else to_text(status))
    return 0 if status.healthy else 1
