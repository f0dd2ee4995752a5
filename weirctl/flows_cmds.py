"""weirctl flows: the load-balancing decisions of a node's data plane, from its agent.

The agent samples decisions when started with --flow-sample N and serves them on
--flows-address (nodeagent/flows.py); this command asks it, on the node:

    weirctl flows [--follow] [--service NS/NAME] [--backend ADDR] [-o json]

or, with --node, asks the controller, which relays them from that node's agent
(weirctl/flows_remote.py):

    weirctl [--controller ADDR] flows --node NODE [--follow] [...]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
from weir.ctl import flows_remote
from weir.ctl.channel import add_tls_args

DEFAULT_AGENT = "127.0.0.1:9479"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flows", help="sampled load-balancing decisions of this node")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new decisions")
    p.add_argument("--service", default="", help="only this Service (namespace/name)")
    p.add_argument(
        "--backend", type=address, default="", help="only decisions for this backend address"
    )
    p.add_argument("--limit", type=int, default=100, help="at most this many past decisions")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.add_argument("--agent", default=DEFAULT_AGENT, help="the agent's --flows-address (host:port)")
    p.add_argument("--node", default="", help="this node's, through the controller (--controller)")
    add_tls_args(p)
    p.set_defaults(func=flows_cmd)


def address(text: str) -> str:
    """A backend address as decisions name it (a filter with its port would match none);
    "" is no filter (argparse passes the default through this too)."""
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address (without its port, e.g. 10.1.0.1)"
        ) from None


def decisions(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The agent's answer, one decision at a time (forever with --follow)."""
    host, _, port = args.agent.rpartition(":")
    query = {"limit": str(args.limit)}
    query.update({k: v for k, v in (("service", args.service), ("backend", args.backend)) if v})
    if args.follow:
        query["follow"] = "1"
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=None)
    try:
        conn.request("GET", "/flows?" + urllib.parse.urlencode(query))
        resp = conn.getresponse()
        if resp.status != 200:
            raise ConnectionError(f"the agent answered {resp.status} {resp.reason}")
        for line in resp:
            yield json.loads(line)
    finally:
        conn.close()


def text(d: dict[str, Any]) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(d["time"])) + f".{int(d['time'] % 1 * 1000):03d}"
    svc = f" ({d['service']})" if d["service"] else ""
    line = f"{at} {d['protocol']} {d['client']}:{d['client_port']} -> {d['vip']}:{d['port']}{svc}"
    if d["backend"]:
        line += f" -> {d['backend']}"
        if d["backend_node"]:
            line += f" via node {d['backend_node']}"
    how = d["how"] + (f" slot {d['slot']}" if d["how"] in ("maglev", "affinity") else "")
    notes = [n for n in ("icmp", "first_fragment", "untracked") if d[n]]
    line += f" {how}" + "".join(f" {n}" for n in notes)
    return line + (f" drop {d['drop']}" if d["drop"] else f" {d['action']}")


def flows_cmd(args: argparse.Namespace) -> int:
    read = flows_remote.decisions if args.node else decisions
    try:
        with contextlib.suppress(KeyboardInterrupt):
            for d in read(args):
                print(json.dumps(d) if args.output == "json" else text(d), flush=True)
    except grpc.RpcError as exc:
        print(flows_remote.error(args, exc), file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"weirctl: cannot read the flow log from the agent at {args.agent}: {exc} "
              f"(is the agent running with --flows-address?)", file=sys.stderr)  # fmt: skip
        return 1
    return 0
