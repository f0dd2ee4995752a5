"""Ask the controller whether the agents caught up; run inside the controller's namespace.

    python -m weir.lab.plane --controller 127.0.0.1:9443 --nodes lb1,lb2 --min-version 3

Prints one JSON document (a Convergence): the controller's version, each agent's acked
version and whether every named node is connected and acked the current version
(>= min-version) in time; and, to show why when they did not, every agent as ListAgents
describes it (or the RPC's error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc
from google.protobuf.json_format import MessageToDict
from weir.common.pb import pb, pb_grpc

RPC_TIMEOUT = 3.0


@dataclass(frozen=True)
class Convergence:
    converged: bool
    version: int
    acked: dict[str, int] = field(default_factory=dict)
    detail: dict = field(default_factory=dict)


async def wait_acked(
    controller: str, nodes: list[str], min_version: int, within: float
) -> Convergence:
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(controller) as channel:
        stub = pb_grpc.NodePlaneStub(channel)
        # ListAgents has no watch: poll it (bounded), as weirctl agents would be run by hand.
        while True:
            try:
                resp = await stub.ListAgents(pb.ListAgentsRequest(), timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                resp, error = None, exc.details()
            if resp is not None:
                acked = {a.node: a.acked_version for a in resp.agents if a.connected}
                done = resp.version >= min_version and all(
                    acked.get(n) == resp.version for n in nodes
                )
                if done or time.monotonic() > deadline:
                    agents = [
                        MessageToDict(a, preserving_proto_field_name=True) for a in resp.agents
                    ]
                    return Convergence(done, resp.version, acked, {"agents": agents})
            elif time.monotonic() > deadline:
                return Convergence(False, 0, {}, {"error": error})
            await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="weir.lab.plane", description=__doc__.splitlines()[0])
    p.add_argument("--controller", required=True)
    p.add_argument("--nodes", default="")
    p.add_argument("--min-version", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    nodes = [n for n in args.nodes.split(",") if n]
    out = asyncio.run(wait_acked(args.controller, nodes, args.min_version, args.timeout))
    print(json.dumps(asdict(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
