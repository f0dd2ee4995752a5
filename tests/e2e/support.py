"""Clients for the end-to-end tests: run inside network namespaces as

    python -m tests.e2e.support burst --vip V --port 80 --count 300  # new connections
    python -m tests.e2e.support stream --vip V --port 80 --seconds 3  # timed, one line each
    python -m tests.e2e.support hold --vip V --port 80 --count 6      # long-lived connections

They talk to the backends' `python -m weir.lab.httpd --lines`, which answers every line it reads
with its own name. Each mode prints JSON (burst: one document; stream: one line per
connection as it completes; hold: one line per command read from stdin) so the test
process, outside the namespaces, reads results from the child's stdout. Every network
operation has a timeout. Connections are closed with an RST (lab.traffic.reset) after the
answer, so no TIME_WAIT state is left that would make a later connection from the same
source port fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass

from weir.lab.traffic import reset

IO_TIMEOUT = 3.0


@dataclass
class Outcome:
    t: float  # wall-clock start of the connection attempt
    sport: int
    backend: str | None = None
    error: str | None = None


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
            reset(writer)
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
            reset(conn[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.e2e.support")
    sub = p.add_subparsers(dest="mode", required=True)
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
    args = p.parse_args(argv)
    if args.mode == "burst":
        sports = [int(x) for x in args.sports.split(",") if x]
        out = asyncio.run(burst(args.vip, args.port, args.count, args.concurrency, sports))
        print(json.dumps(out))
    elif args.mode == "stream":
        asyncio.run(
            stream(args.vip, args.port, args.seconds, args.concurrency, args.pause, args.timeout)
        )
    else:
        asyncio.run(hold(args.vip, args.port, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
