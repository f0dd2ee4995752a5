"""Traffic clients, run inside a client host; results go to stdout as JSON lines.

    python -m weir.lab.client burst  --vip V --count 600 [--sport-base 20000 | --sports 40000,...]
    python -m weir.lab.client stream --vip V --seconds 8 --concurrency 32 [--summary]
    python -m weir.lab.client hold   --vip V --count 24
    python -m weir.lab.client talk   --vip V --count 300 --interval 0.1

Every mode takes --port (80) and --proto: http (one GET per request, keep-alive) or lines
(any line is a request, answered with the backend's name: `python -m weir.lab.httpd --lines`).

burst: new connections (one request each), one Outcome line per finished connection, so the
caller sees progress; with --sport-base or --sports the source ports are fixed, so the same
flows can be replayed after a change. stream: new connections back to back from
`concurrency` workers for `seconds` (each pausing `pause` between two), an Outcome line
each, or with --summary one RateSummary line at the end (connections per second, latency
percentiles). hold: keep-alive connections; prints {"sports": [...]}, then on each stdin line
"ping" asks on every connection and prints the answering backends ("error: ..." for a broken
one); "quit" or EOF closes them. talk: long-lived conversations, each sending a request every
`interval` seconds and reading the answers as they come; prints {"ready": n, "failed": m}
once every conversation had its first answer (or failed); then on stdin "stalled" prints
{"stalled": n, "errors": m} (n: live conversations with no answer for 3 intervals plus
0.3 s), and "stop" (or EOF) prints a TalkReport and exits. Times are time.time(), so the
caller can line them up with its own events.

Connections end with an RST (SO_LINGER 0) after the answer: no TIME_WAIT is left, so stream
never runs out of ports and burst can reuse its fixed source ports at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Literal

from weir.lab.httpd import read_headers
from weir.lab.stats import percentile

IO_TIMEOUT = 3.0
MAX_HEADER_LINES = 50
Proto = Literal["http", "lines"]
FAILURES = (OSError, TimeoutError, EOFError, ValueError)  # how one connection can fail


@dataclass
class Outcome:
    """One connection of burst or stream."""

    sport: int
    t: float  # wall-clock start of the attempt
    backend: str = ""
    error: str = ""
    ms: float = 0.0  # connect to full answer

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.backend)


@dataclass
class RateSummary:
    """stream --summary: what the workers managed."""

    count: int  # answered connections
    errors: int
    first_errors: list[str]
    seconds: float
    rate: float  # answered connections per second
    p50_ms: float
    p99_ms: float
    by_backend: dict[str, int]


@dataclass
class Conversation:
    """One of talk's conversations."""

    sport: int = 0
    backend: str | None = None
    answers: int = 0
    error: str | None = None  # how it ended early: reset, closed, wrong backend, connect
    error_t: float | None = None
    max_gap: float = 0.0  # longest time between two answers (to t_stop when they stopped)
    gap_end_t: float | None = None
    last: float = 0.0  # time of the last answer (or of the connect)

    def answered(self, now: float) -> None:
        gap = now - self.last
        if gap > self.max_gap:
            self.max_gap, self.gap_end_t = gap, now
        self.last = now
        self.answers += 1

    def fail(self, why: str) -> None:
        if self.error is None:
            self.error, self.error_t = why, time.time()


@dataclass
class TalkReport:
    t_start: float
    t_stop: float
    conns: list[Conversation] = field(default_factory=list)

    @classmethod
    def from_json(cls, doc: dict) -> TalkReport:
        return cls(doc["t_start"], doc["t_stop"], [Conversation(**c) for c in doc["conns"]])


# -- the two protocols ------------------------------------------------------------------------


def request(proto: Proto, vip: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {vip}\r\n\r\n".encode() if proto == "http" else b"name?\n"


async def answer(proto: Proto, reader: asyncio.StreamReader, within: float | None) -> str:
    """The backend's name from one answer, each read bounded by within seconds (None:
    unbounded); EOFError when the connection closed first."""
    first = await asyncio.wait_for(reader.readline(), within)
    if not first:
        raise EOFError("closed")
    if proto == "lines":
        return first.decode().strip()
    if not first.startswith(b"HTTP/1.1 200"):
        raise ValueError(f"bad status {first[:40]!r}")
    headers = await read_headers(reader, within or IO_TIMEOUT, MAX_HEADER_LINES)
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), within)
    return body.decode().strip()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0): no TIME_WAIT is left behind."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):  # already closed: nothing to reset
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


def failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- modes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    vip: str
    port: int
    proto: Proto


async def ask(target: Target, sport: int = 0, step_timeout: float = IO_TIMEOUT) -> Outcome:
    """One connection: connect (from sport when given), one request, reset."""
    out = Outcome(sport=sport, t=time.time())
    writer = None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t0 = time.perf_counter()
    try:
        # Bound before connecting, so a failed attempt still names its flow.
        sock.bind(("0.0.0.0", sport))
        out.sport = sock.getsockname()[1]
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (target.vip, target.port)), step_timeout)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(request(target.proto, target.vip))
        out.backend = await answer(target.proto, reader, step_timeout)
        out.ms = (time.perf_counter() - t0) * 1e3
    except FAILURES as exc:
        out.error = failure(exc)
    finally:
        if writer is not None:
            reset(writer)
        else:
            sock.close()
    return out


def emit(doc: object) -> None:
    print(json.dumps(asdict(doc) if is_dataclass(doc) else doc), flush=True)  # type: ignore[arg-type]


async def burst(target: Target, sports: list[int], concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(sport: int) -> None:
        async with sem:
            emit(await ask(target, sport))

    await asyncio.gather(*(one(p) for p in sports))


async def stream(
    target: Target,
    seconds: float,
    concurrency: int,
    pause: float,
    step_timeout: float,
    summary: bool,
) -> None:
    t0 = time.monotonic()
    deadline = t0 + seconds
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while time.monotonic() < deadline:
            out = await ask(target, step_timeout=step_timeout)
            if summary:
                outcomes.append(out)
            else:
                emit(out)
            await asyncio.sleep(pause)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if summary:
        elapsed = time.monotonic() - t0
        done = [o for o in outcomes if o.ok]
        latencies = [o.ms for o in done]
        errors = [o.error for o in outcomes if not o.ok]
        emit(
            RateSummary(
                count=len(done),
                errors=len(errors),
                first_errors=errors[:5],
                seconds=elapsed,
                rate=len(done) / elapsed,
                p50_ms=percentile(latencies, 50),
                p99_ms=percentile(latencies, 99),
                by_backend=dict(Counter(o.backend for o in done)),
            )
        )


async def command() -> str:
    """The next command on stdin ("" at EOF)."""
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip()


async def hold(target: Target, count: int) -> None:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
    for _ in range(count):
        try:
            opening = asyncio.open_connection(target.vip, target.port)
            conns.append(await asyncio.wait_for(opening, IO_TIMEOUT))
        except (OSError, TimeoutError):
            conns.append(None)
    emit({"sports": [c[1].get_extra_info("sockname")[1] if c else 0 for c in conns]})
    while await command() == "ping":
        answers = []
        for i, conn in enumerate(conns):
            if conn is None:
                answers.append("error: not connected")
                continue
            reader, writer = conn
            try:
                writer.write(request(target.proto, target.vip))
                answers.append(await answer(target.proto, reader, IO_TIMEOUT))
            except FAILURES as exc:
                answers.append(f"error: {failure(exc)}")
                reset(writer)
                conns[i] = None
        emit(answers)
    for conn in conns:
        if conn is not None:
            reset(conn[1])


async def converse(
    target: Target, interval: float, conv: Conversation, first: asyncio.Event, stop: asyncio.Event
) -> None:
    """One conversation: a request every interval, the answers read as they come."""
    try:
        opening = asyncio.open_connection(target.vip, target.port)
        reader, writer = await asyncio.wait_for(opening, IO_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        conv.fail(f"connect: {failure(exc)}")
        first.set()
        return
    conv.sport = writer.get_extra_info("sockname")[1]
    conv.last = time.time()

    async def send() -> None:
        with contextlib.suppress(OSError):  # the reader sees the same failure and records it
            while not stop.is_set():
                writer.write(request(target.proto, target.vip))
                await writer.drain()
                await asyncio.sleep(interval)

    sender = asyncio.create_task(send())
    try:
        while not stop.is_set():
            # No timeout: a conversation stalled by a failure resumes or breaks on its own.
            name = await answer(target.proto, reader, None)
            if conv.backend is None:
                conv.backend = name
                first.set()
            elif name != conv.backend:
                conv.fail(f"wrong backend {name}")
                break
            conv.answered(time.time())
    except EOFError:
        conv.fail("closed")
    except ConnectionResetError:
        conv.fail("reset")
    except (OSError, ValueError) as exc:
        conv.fail(failure(exc))
    finally:
        first.set()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()


async def talk(target: Target, count: int, interval: float) -> None:
    stop = asyncio.Event()
    convs = [Conversation() for _ in range(count)]
    firsts = [asyncio.Event() for _ in convs]
    t_start = time.time()
    tasks = []
    for conv, first in zip(convs, firsts, strict=True):
        tasks.append(asyncio.create_task(converse(target, interval, conv, first, stop)))
        await asyncio.sleep(0.002)  # a few hundred connects a second, not a SYN flood
    await asyncio.gather(*(f.wait() for f in firsts))
    failed = sum(1 for c in convs if c.backend is None)
    emit({"ready": count - failed, "failed": failed})

    while (cmd := await command()) == "stalled":
        late = time.time() - 3 * interval - 0.3
        stalled = sum(1 for c in convs if c.error is None and c.last < late)
        emit({"stalled": stalled, "errors": sum(1 for c in convs if c.error is not None)})
    if cmd not in ("stop", ""):
        print(f"talk: unknown command {cmd!r}, stopping", file=sys.stderr)
    t_stop = time.time()
    for c in convs:  # answers that stopped count as a gap up to now
        if c.error is None and c.last:
            c.answered(t_stop)
            c.answers -= 1
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    emit(TalkReport(t_start, t_stop, convs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="weir.lab.client", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("burst", "stream", "hold", "talk"):
        c = sub.add_parser(mode)
        c.add_argument("--vip", required=True)
        c.add_argument("--port", type=int, default=80)
        c.add_argument("--proto", choices=("http", "lines"), default="http")
        c.add_argument("--count", type=int, default=100)
        c.add_argument("--concurrency", type=int, default=16)
        c.add_argument("--sport-base", type=int, default=0, help="burst: ports base, base+1..")
        c.add_argument("--sports", default="", help="burst: comma-separated source ports")
        c.add_argument("--seconds", type=float, default=5.0)
        c.add_argument("--pause", type=float, default=0.0, help="stream: between connections")
        c.add_argument("--timeout", type=float, default=IO_TIMEOUT, help="stream: per step")
        c.add_argument("--summary", action="store_true", help="stream: one summary line")
        c.add_argument("--interval", type=float, default=0.1, help="talk: between requests")
    args = p.parse_args(argv)
    target = Target(args.vip, args.port, args.proto)
    if args.mode == "burst":
        sports = [int(x) for x in args.sports.split(",") if x]
        if not sports:
            base = args.sport_base
            sports = [base + i if base else 0 for i in range(args.count)]
        run = burst(target, sports, args.concurrency)
    elif args.mode == "stream":
        run = stream(target, args.seconds, args.concurrency, args.pause, args.timeout, args.summary)
    elif args.mode == "hold":
        run = hold(target, args.count)
    else:
        run = talk(target, args.count, args.interval)
    asyncio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
