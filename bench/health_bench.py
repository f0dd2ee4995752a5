"""The agent's health checks: CPU for 1,000 backends checked every second from one agent
(issue 14: under 5 % of a core).

Runs nodeagent.health.checker.HealthChecker, as the agent does (one check loop per target,
bare non-blocking sockets marked for the check path, rise/fall bookkeeping), against TCP
listeners in another process on 127.0.0.1; the path program and MAC resolution are left out
(they cost the checker nothing per check: one map write per target when it appears). After
a warm-up, measures this process's CPU time (user + system, getrusage) over a window and
prints it as a share of one core, with the checks actually completed per second; then the
kernel floor: the same connects back to back with no checker at all, at the same rate (what
no checker can go below; over loopback it includes the listener's half of each handshake).

    sudo .venv/bin/python bench/health_bench.py [--backends 1000] [--interval 1] [--seconds 10]
        [--rounds 1]

The benchmark report (bench/report.py, section health) takes run()'s rows.

Root: SO_MARK needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.nodeagent.standins: the loopback checker

from weir.common.aio import Generation  # noqa: E402
from weir.nodeagent.dataplane.hcpath import mark  # noqa: E402
from weir.nodeagent.health.checker import HealthChecker  # noqa: E402
from weir.nodeagent.health.targets import Check, Target  # noqa: E402
from weir.nodeagent.service import NodeSettings  # noqa: E402

from tests.nodeagent.standins import loopback_checker  # noqa: E402

TARGET_SHARE = 0.05
FLOOR_CONNECTS = 5000
BASE_PORT = 20000
PORTS = 10  # listeners: each takes 1/PORTS of the connections

SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in range(int(sys.argv[1]), int(sys.argv[1]) + int(sys.argv[2])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
            conn.close()
        except OSError:
            pass
"""


@dataclass(frozen=True)
class HealthBench:
    backends: int
    interval: float
    seconds: float
    cpu_share: float  # of one core: user + system
    user_share: float  # the checker's Python
    checks_per_second: float
    failing: int
    # The kernel floor: the same connects (socket, mark, linger, connect, epoll, close) back
    # to back with no checker, as a share of a core at the same rate. Over loopback it holds
    # the listener's half of each handshake too.
    floor_share: float = 0.0


async def measure(backends: int, interval: float, seconds: float) -> HealthBench:
    changes = Generation()
    checker = loopback_checker(changes, refresh=3600)
    check = Check("tcp", interval, min(1.0, interval), rise=2, fall=3)
    targets = {
        Target("bench", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 80, "127.0.0.1",
               BASE_PORT + i % PORTS): check
        for i in range(backends)
    }  # fmt: skip
    checker.apply(targets, NodeSettings(load_balancer=True, address="127.0.0.1"))
    counted = _count_probes()
    task = asyncio.create_task(checker.run())
    try:
        await asyncio.sleep(interval * 2)  # every loop started and spread out
        before, done_before, t0 = _cpu(), counted[0], time.monotonic()
        await asyncio.sleep(seconds)
        after, done, elapsed = _cpu(), counted[0] - done_before, time.monotonic() - t0
        failing = len(checker.report()[1])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    user = (after[0] - before[0]) / elapsed
    cpu = user + (after[1] - before[1]) / elapsed
    return HealthBench(backends, interval, elapsed, cpu, user, done / elapsed, failing)


def _cpu() -> tuple[float, float]:
    """(user, system) seconds of this process. Over loopback the system time includes the
    listener's half of every handshake, which the kernel runs inside the checker's connect."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _count_probes() -> list[int]:
    """Count the checks completed, by wrapping the checker's bookkeeping."""
    counter = [0]
    original = HealthChecker._record

    def counting(self: HealthChecker, *args: Any) -> None:
        counter[0] += 1
        original(self, *args)

    HealthChecker._record = counting  # type: ignore[method-assign]
    return counter


def floor(connects: int) -> float:
    """CPU seconds per connect, done the cheapest way: one after the other, no event loop."""
    linger = struct.pack("ii", 1, 0)
    poller = select.epoll()
    before = _cpu()
    for i in range(connects):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark(i % 1024))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.connect_ex(("127.0.0.1", BASE_PORT + i % PORTS))
        poller.register(sock.fileno(), select.EPOLLOUT | select.EPOLLONESHOT)
        poller.poll(1)
        sock.close()
    after = _cpu()
    poller.close()
    return (after[0] + after[1] - before[0] - before[1]) / connects


def run(backends: int, interval: float, seconds: float, rounds: int) -> list[HealthBench]:
    """rounds measurements, one after the other, against one listener process (root)."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(BASE_PORT), str(PORTS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        rows = []
        for _ in range(rounds):
            row = asyncio.run(measure(backends, interval, seconds))
            per_connect = floor(FLOOR_CONNECTS)
            rows.append(replace(row, floor_share=per_connect * row.checks_per_second))
        return rows
    finally:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", type=int, default=1000)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    for r in run(args.backends, args.interval, args.seconds, args.rounds):
        print(f"backends            {r.backends} at {r.interval:g} s intervals")
        print(f"checks per second   {r.checks_per_second:.0f}")
        print(f"failing             {r.failing}")
        print(f"cpu                 {r.cpu_share * 100:.2f} % of one core over {r.seconds:.1f} s")
        print(f"  of which user     {r.user_share * 100:.2f} %")
        print(f"kernel floor        {r.floor_share * 100:.2f} % (the connects alone, no checker)")
        verdict = "met" if r.cpu_share < TARGET_SHARE else "MISSED"
        print(f"target              {TARGET_SHARE * 100:.0f} %: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
