"""weirctl flows --node: a node's flow log through the controller (WatchFlows).

The controller relays the node's sampled decisions from its agent while the call lasts.
Only the replica that holds the node's agent stream can: another answers UNAVAILABLE
with `weir-agent-elsewhere`, and this tries again on a new connection (through a
Kubernetes Service, each lands on a replica at random) up to ELSEWHERE_TRIES times.
What the watcher lost (it read too slowly, or the node held decisions back over its rate)
and notices (sampling is off) go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import grpc
from weir.common.pb import pb, pb_grpc
from weir.ctl.channel import open_channel

ELSEWHERE_KEY = "weir-agent-elsewhere"  # controller/plane/servicer.py
ELSEWHERE_TRIES = 8
LIMIT_MAX = 2**32 - 1  # the request's field (the controller keeps at most 1000 anyway)


def as_dict(d: pb.FlowDecision) -> dict[str, Any]:
    """A decision as the agent's own JSON has it (nodeagent/flows.py)."""
    fields = [f.name for f in d.DESCRIPTOR.fields]
    return {"service": d.service, **{n: getattr(d, n) for n in fields if n != "service"}}


def decisions(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The node's decisions through the controller, one at a time (forever with --follow);
    raises grpc.RpcError when the controller refuses or the watch ends."""
    request = pb.WatchFlowsRequest(
        node=args.node,
        service=args.service,
        backend=args.backend,
        limit=min(max(args.limit, 0), LIMIT_MAX),
        follow=args.follow,
    )
    for attempt in range(ELSEWHERE_TRIES):
        with open_channel(args) as channel:
            seen = False
            try:
                lost = (0, 0)
                for response in pb_grpc.NodePlaneStub(channel).WatchFlows(request):
                    seen = True
                    if response.notice:
                        print(f"weirctl: {response.notice}", file=sys.stderr)
                    if (response.dropped, response.unsent) != lost:
                        lost = (response.dropped, response.unsent)
                        print(f"weirctl: decisions lost so far: {lost[0]} (read too slowly), "
                              f"{lost[1]} (held back by the node over its rate)",
                              file=sys.stderr)  # fmt: skip
                    for d in response.decisions:
                        yield as_dict(d)
                return
            except grpc.RpcError as exc:
                trailers = exc.trailing_metadata() or ()
                elsewhere = any(m.key == ELSEWHERE_KEY for m in trailers)
                if seen or not elsewhere or attempt == ELSEWHERE_TRIES - 1:
                    raise


def error(args: argparse.Namespace, exc: grpc.RpcError) -> str:
    return f"weirctl: {args.controller}: {exc.code().name}: {exc.details()}"
