"""Hosts and traffic for the end-to-end tests: run inside network namespaces as

    python -m tests.e2e.support serve --name b1 --port 80          # a backend
    python -m tests.e2e.support burst --vip V --port 80 --count 300  # new connections
    python -m tests.e2e.support stream --vip V --port 80 --seconds 3  # timed, one line each
    python -m tests.e2e.support hold --vip V --port 80 --count 6      # long-lived connections
    python -m tests.e2e.support agents --controller 127.0.0.1:9443 --wait-nodes lb1,lb2

The server answers every line it reads with its own name. Client modes print JSON (burst:
one document; stream: one line per connection as it completes; hold: one line per command
read from stdin) so the test process, outside the namespaces, reads results from the
child's stdout. Every network operation has a timeout.
Connections are closed with an RST (SO_LINGER 0) after the answer, so no TIME_WAIT state is
left that would make a later connection from the same source port fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

IO_TIMEOUT = 3.0


@dataclass
class Outcome:
    t: float  # wall-clock start of the connection attempt
    sport: int
    backend: str | None = None
    error: str | None = None


# -- the backend's server ---------------------------------------------------------------------


async def serve(name: str, port: int) -> None:
    answer = f"{name}\n".encode()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                writer.write(answer)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "0.0.0.0", port, reuse_address=True, backlog=512)
    print(f"serving {name} on {port}", flush=True)
    async with server:
        await server.serve_forever()


# -- clients ----------------------------------------------------------------------------------


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed (e.g. reset by the peer)
    writer.close()


async def ask(vip: str, port: int, sport: int = 0, step_timeout: float = IO_TIMEOUT) -> Outcome:
    """One connection: connect (from sport when given), ask the backend's name, reset."""
    out = Outcome(t=time.time(), sport=sport)
    writer = None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Bound before connecting, so a failed attempt still names its flow.
        sock.bind(("0.0.0.0", sport))
        out.sport = sock.getsockname()[1]
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (vip, port)), step_timeout)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"name?\n")
        line = await asyncio.wait_for(reader.readline(), step_timeout)
        if not line:
            raise ConnectionError("closed without an answer")
        out.backend = line.decode().strip()
    except (OSError, TimeoutError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            _abort(writer)
        else:
            sock.close()
    return out


async def burst(vip: str, port: int, count: int, concurrency: int, sports: list[int]) -> list:
    sem = asyncio.Semaphore(concurrency)

    async def one(sport: int) -> Outcome:
        async with sem:
            return await ask(vip, port, sport)

    ports = sports or [0] * count
    return [asdict(o) for o in await asyncio.gather(*(one(p) for p in ports))]


async def stream(
    vip: str, port: int, seconds: float, concurrency: int, pause: float, step_timeout: float
) -> None:
    """New connections from `concurrency` workers for `seconds`, each worker pausing `pause`
    seconds between two (pacing: a few hundred flows a second, not tens of thousands).
    Prints each outcome as a JSON line when it completes, so the caller can act on progress."""
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            print(json.dumps(asdict(await ask(vip, port, step_timeout=step_timeout))), flush=True)
            await asyncio.sleep(pause)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def hold(vip: str, port: int, count: int) -> None:
    """Open count connections; on each stdin line "ping", ask on every one and print the
    answers (a name, or "error: ..."); on "quit" or EOF, close them and exit."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
    for _ in range(count):
        try:
            conns.append(await asyncio.wait_for(asyncio.open_connection(vip, port), IO_TIMEOUT))
        except (OSError, TimeoutError):
            conns.append(None)
    loop = asyncio.get_running_loop()
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if cmd != "ping":
            break
        answers = []
        for conn in conns:
            if conn is None:
                answers.append("error: not connected")
                continue
            reader, writer = conn
            try:
                writer.write(b"name?\n")
                line = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
                answers.append(line.decode().strip() or "error: closed")
            except (OSError, TimeoutError) as exc:
                answers.append(f"error: {type(exc).__name__}: {exc}")
        print(json.dumps(answers), flush=True)
    for conn in conns:
        if conn is not None:
            _abort(conn[1])


# -- the controller's view of the agents ------------------------------------------------------


async def agents(controller: str, wait_nodes: list[str], min_version: int, wait: float) -> dict:
    """ListAgents as JSON. With wait_nodes: first wait (bounded) until each of them is
    connected and has acked the controller's current version, which is >= min_version."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from common.pb import pb, pb_grpc

    deadline = time.monotonic() + wait
    async with grpc.aio.insecure_channel(controller) as channel:
        stub = pb_grpc.NodePlaneStub(channel)
        while True:
            try:
                resp = await stub.ListAgents(pb.ListAgentsRequest(), timeout=IO_TIMEOUT)
            except grpc.aio.AioRpcError:
                resp = None
            if resp is not None:
                by_node = {a.node: a for a in resp.agents}
                done = resp.version >= min_version and all(
                    n in by_node
                    and by_node[n].connected
                    and by_node[n].acked_version == resp.version
                    for n in wait_nodes
                )
                if done or time.monotonic() > deadline:
                    out = MessageToDict(resp, preserving_proto_field_name=True)
                    out["converged"] = done
                    return out
            elif time.monotonic() > deadline:
                return {"converged": False, "error": "controller unreachable"}
            await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.e2e.support")
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, default=80)
    for mode in ("burst", "stream", "hold"):
        c = sub.add_parser(mode)
        c.add_argument("--vip", required=True)
        c.add_argument("--port", type=int, default=80)
        c.add_argument("--count", type=int, default=1)
        c.add_argument("--concurrency", type=int, default=16)
        c.add_argument("--seconds", type=float, default=1.0)
        c.add_argument("--pause", type=float, default=0.005, help="between connections (stream)")
        c.add_argument("--timeout", type=float, default=IO_TIMEOUT, help="per step (stream)")
        c.add_argument("--sports", default="", help="comma-separated source ports (burst)")
    a = sub.add_parser("agents")
    a.add_argument("--controller", required=True)
    a.add_argument("--wait-nodes", default="")
    a.add_argument("--min-version", type=int, default=0)
    a.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.mode == "serve":
        asyncio.run(serve(args.name, args.port))
    elif args.mode == "burst":
        sports = [int(x) for x in args.sports.split(",") if x]
        out = asyncio.run(burst(args.vip, args.port, args.count, args.concurrency, sports))
        print(json.dumps(out))
    elif args.mode == "stream":
        asyncio.run(
            stream(args.vip, args.port, args.seconds, args.concurrency, args.pause, args.timeout)
        )
    elif args.mode == "hold":
        asyncio.run(hold(args.vip, args.port, args.count))
    elif args.mode == "agents":
        nodes = [n for n in args.wait_nodes.split(",") if n]
        print(
            json.dumps(asyncio.run(agents(args.controller, nodes, args.min_version, args.timeout)))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
