"""An agent swarm for bench/plane_bench.py: N ControllerClients in one process.

Each agent has its own channel and TCP connection and a trivial handler that acks at
once. Runs until stdin closes (the bench holds the other end) or SIGTERM.

    python bench/plane_swarm.py --target 127.0.0.1:9443 --agents 200
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from grpc.experimental.aio import init_grpc_aio
from weir.common.logs import configure
from weir.common.pb import pb
from weir.nodeagent.controller_client import ControllerClient, Update


async def ack(update: Update) -> pb.Ack:
    return pb.Ack()


async def stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()


async def run(args: argparse.Namespace) -> None:
    # Keep grpc.aio initialized until the process exits: its shutdown inside asyncio.run()
    # can hang with many channels (grpc/grpc#40989).
    init_grpc_aio()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    agents = [
        ControllerClient(
            args.target,
            f"{args.prefix}{i}",
            ack,
            backoff_initial=0.05,
            backoff_max=1.0,
            channel_options=(("grpc.use_local_subchannel_pool", 1),),
        )
        for i in range(args.agents)
    ]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(a.run()) for a in agents]
        watcher = tg.create_task(stdin_closed())
        stopper = tg.create_task(stop.wait())
        await asyncio.wait([watcher, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in [*tasks, watcher, stopper]:
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--prefix", default="lb-")
    args = parser.parse_args()
    configure("console", "warning")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
