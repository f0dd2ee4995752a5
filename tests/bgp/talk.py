"""Long-lived TCP conversations through a VIP, measured: run in the client namespace as

    python tests/bgp/talk.py --vip 192.0.2.10 --port 80 --count 300 --interval 0.1

Opens `count` connections (each from its own source port, so ECMP spreads them), then on
every connection sends a line every `interval` seconds and reads the backend's answers
(`python -m weir.lab.httpd --lines` answers each line with its own name). Prints one JSON line
{"ready": n, "failed": m} once every connection has had its first answer (or failed). Then
it reads commands from stdin: "stalled" prints {"stalled": n, "errors": m}, n counting the
live connections with no answer for 3 intervals (plus 0.3 s); "stop" (or EOF) prints the
report and exits:

    {"t_start": ..., "t_stop": ..., "conns": [{"sport": 40001, "backend": "b2",
      "answers": 512, "error": null, "error_t": null, "max_gap": 0.11, "gap_end_t": ...}]}

error: how the connection ended early ("reset", "closed", "wrong backend b3", or a
connect error); max_gap: the longest time between two answers (up to t_stop when the
answers stopped), with the wall-clock time it ended. Times are time.time() so the test can
line them up with its own events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass

CONNECT_TIMEOUT = 3.0


@dataclass
class Conn:
    sport: int = 0
    backend: str | None = None
    answers: int = 0
    error: str | None = None
    error_t: float | None = None
    max_gap: float = 0.0
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


async def converse(
    vip: str, port: int, interval: float, conn: Conn, first: asyncio.Event, stop: asyncio.Event
) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, port), CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        conn.fail(f"connect: {type(exc).__name__}: {exc}")
        first.set()
        return
    conn.sport = writer.get_extra_info("sockname")[1]
    conn.last = time.time()

    async def send() -> None:
        try:
            while not stop.is_set():
                writer.write(b"x\n")
                await writer.drain()
                await asyncio.sleep(interval)
        except OSError:
            pass  # the reader sees the same failure and records it

    sender = asyncio.create_task(send())
    try:
        while line := await reader.readline():
            name = line.decode().strip()
            if conn.backend is None:
                conn.backend = name
                first.set()
            elif name != conn.backend:
                conn.fail(f"wrong backend {name}")
                break
            conn.answered(time.time())
            if stop.is_set():
                break
        else:
            conn.fail("closed")
    except ConnectionResetError:
        conn.fail("reset")
    except OSError as exc:
        conn.fail(f"{type(exc).__name__}: {exc}")
    finally:
        first.set()
        sender.cancel()
        writer.close()


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--interval", type=float, default=0.1)
    args = p.parse_args()

    stop = asyncio.Event()
    conns = [Conn() for _ in range(args.count)]
    firsts = [asyncio.Event() for _ in conns]
    t_start = time.time()
    tasks = []
    for conn, first in zip(conns, firsts, strict=True):
        tasks.append(
            asyncio.create_task(converse(args.vip, args.port, args.interval, conn, first, stop))
        )
        await asyncio.sleep(0.002)  # a few hundred connects a second, not a SYN flood
    await asyncio.gather(*(f.wait() for f in firsts))
    failed = sum(1 for c in conns if c.backend is None)
    print(json.dumps({"ready": len(conns) - failed, "failed": failed}), flush=True)

    loop = asyncio.get_running_loop()
    while (cmd := (await loop.run_in_executor(None, sys.stdin.readline)).strip()) == "stalled":
        late = time.time() - 3 * args.interval - 0.3
        stalled = sum(1 for c in conns if c.error is None and c.last < late)
        errors = sum(1 for c in conns if c.error is not None)
        print(json.dumps({"stalled": stalled, "errors": errors}), flush=True)
    if cmd not in ("stop", ""):
        print(f"talk: unknown command {cmd!r}, stopping", file=sys.stderr)
    t_stop = time.time()
    for c in conns:  # answers that stopped count as a gap up to now
        if c.error is None and c.last:
            c.answered(t_stop)
            c.answers -= 1
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report = {"t_start": t_start, "t_stop": t_stop, "conns": [asdict(c) for c in conns]}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
