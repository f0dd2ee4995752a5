"""weirctl health: each backend the LB nodes' health checks report, its state (healthy, out,
fail-open), which LB nodes see it failing, since when and why (the ListHealth RPC)."""

from __future__ import annotations

import argparse
import time

from weir.common.pb import pb
from weir.ctl.channel import add_tls_args
from weir.ctl.controller_cmds import TIMEOUT, _show, age, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="backends failing their health checks, and where")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_tls_args(p)
    p.set_defaults(func=health_cmd)


def health_cmd(args: argparse.Namespace) -> int:
    return _show(
        args, lambda s: s.ListHealth(pb.ListHealthRequest(), timeout=TIMEOUT), format_health
    )


def format_health(resp: pb.ListHealthResponse, now: float | None = None) -> str:
    now = time.time() if now is None else now
    head = f"controller version {resp.version}"
    if resp.fail_open:
        head += f"  fail open (every backend failing, all kept): {', '.join(resp.fail_open)}"
    if not resp.backends:
        return head + "\n\nno backend fails its health check"
    rows = []
    for b in resp.backends:
        failing = ", ".join(
            f"{f.node} {age(now - f.since_unix)} ({f.reason})" if f.reason else f.node
            for f in b.failing
        )
        rows.append(
            (
                b.service_id,
                f"{b.address}:{b.port}",
                b.state,
                age(now - b.since_unix) if b.since_unix else "-",
                f"{len(b.failing)}/{b.checkers}",
                failing or "-",
            )
        )
    headers = ("FRONTEND", "BACKEND", "STATE", "SINCE", "FAILING", "FAILING ON (SINCE, LAST)")
    return "\n".join([head, "", table(headers, rows)])
