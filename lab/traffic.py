"""The lab's HTTP clients, run inside a client namespace; results go to stdout as JSON.

    python -m weir.lab.traffic burst --vip V --count 600 [--sport-base 20000]   # one line per conn
    python -m weir.lab.traffic rate --vip V --seconds 8 --concurrency 32          # summary line
    python -m weir.lab.traffic hold --vip V --count 24                            # long-lived conns

burst: new connections (one GET each), one JSON line per finished connection, so the caller
shows progress; with --sport-base the source ports are fixed, so the same flows can be
replayed after a change. rate: as many new connections as the workers manage in the given
time, with latency percentiles. hold: keep-alive connections; prints their source ports, then
on each stdin line "ping" sends one GET on every connection and prints the answering
backends ("error: ..." for a broken one); "quit" or EOF closes them.

Connections end with an RST (SO_LINGER 0) after the answer: no TIME_WAIT is left, so rate
mode never runs out of ports and burst mode can reuse its fixed source ports at once.
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

from weir.lab.httpd import read_headers

IO_TIMEOUT = 3.0
MAX_HEADER_LINES = 50


@dataclass
class Result:
    sport: int
    backend: str = ""
    error: str = ""
    ms: float = 0.0  # connect to full answer


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0): no TIME_WAIT is left behind."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed: nothing to reset
    writer.close()


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, vip: str) -> str:
    """One GET on an open connection; returns the backend's name from the body."""
    writer.write(f"GET / HTTP/1.1\r\nHost: {vip}\r\n\r\n".encode())
    status = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
    if not status.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"bad status {status[:40]!r}")
    headers = await read_headers(reader, IO_TIMEOUT, MAX_HEADER_LINES)
    length = int(headers.get("content-length", 0))
    body = await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT)
    return body.decode().strip()


async def one(vip: str, port: int, sport: int = 0) -> Result:
    res = Result(sport=sport)
    writer = None
    t0 = time.perf_counter()
    try:
        local = ("0.0.0.0", sport) if sport else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(vip, port, local_addr=local), IO_TIMEOUT
        )
        res.sport = writer.get_extra_info("sockname")[1]
        res.backend = await get(reader, writer, vip)
        res.ms = (time.perf_counter() - t0) * 1e3
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            reset(writer)
    return res


async def burst(vip: str, port: int, count: int, concurrency: int, sport_base: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with sem:
            res = await one(vip, port, sport_base + i if sport_base else 0)
        print(json.dumps(asdict(res)), flush=True)

    await asyncio.gather(*(run(i) for i in range(count)))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def rate(vip: str, port: int, seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    backends: dict[str, int] = {}
    t0 = time.monotonic()
    deadline = t0 + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            res = await one(vip, port)
            if res.error:
                errors.append(res.error)
            else:
                latencies.append(res.ms)
                backends[res.backend] = backends.get(res.backend, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    return {
        "count": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "by_backend": backends,
    }


async def hold(vip: str, port: int, count: int) -> None:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
    sports = []
    for _ in range(count):
        try:
            conn = await asyncio.wait_for(asyncio.open_connection(vip, port), IO_TIMEOUT)
            sports.append(conn[1].get_extra_info("sockname")[1])
            conns.append(conn)
        except (OSError, TimeoutError):
            sports.append(0)
            conns.append(None)
    print(json.dumps({"sports": sports}), flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "ping":
        answers = []
        for i, conn in enumerate(conns):
            if conn is None:
                answers.append("error: not connected")
                continue
            try:
                answers.append(await get(*conn, vip))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                answers.append(f"error: {type(exc).__name__}: {exc}")
                conns[i] = None
        print(json.dumps(answers), flush=True)
    for conn in conns:
        if conn is not None:
            reset(conn[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="weir.lab.traffic", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("burst", "rate", "hold"):
        c = sub.add_parser(mode)
        c.add_argument("--vip", required=True)
        c.add_argument("--port", type=int, default=80)
        c.add_argument("--count", type=int, default=100)
        c.add_argument("--concurrency", type=int, default=16)
        c.add_argument("--seconds", type=float, default=5.0)
        c.add_argument("--sport-base", type=int, default=0)
    args = p.parse_args(argv)
    if args.mode == "burst":
        asyncio.run(burst(args.vip, args.port, args.count, args.concurrency, args.sport_base))
    elif args.mode == "rate":
        print(json.dumps(asyncio.run(rate(args.vip, args.port, args.seconds, args.concurrency))))
    else:
        asyncio.run(hold(args.vip, args.port, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
