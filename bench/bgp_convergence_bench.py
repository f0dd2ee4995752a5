"""BGP failover convergence: how long until the router's multipath route drops a dead node?

    sudo .venv/bin/python bench/bgp_convergence_bench.py [--rounds 3] [--hold 3] [--defaults]

A BIRD 2 router and three LB nodes on one bridge (namespaces, prefix wbgb); each node runs
the Weir BGP speaker (ExaBGP 5) announcing the same VIP, so the router's kernel route for
it has three next hops. Then one node goes away and we time, polling the router's kernel
route every 10 ms, until it has two next hops. Side by side in one run:

- baseline, withdraw: the node withdraws the VIP (what a drain does);
- hard failure: the node's link goes down and its ExaBGP is killed, the router only learns
  it from its hold timer (short timers: --hold seconds on both sides, keepalive hold/3);
- hard failure with graceful restart negotiated (restart time 120 s): does the router keep
  the dead node's route as stale on top of the hold time?
- --defaults: the hard failure with nobody's timers set (ExaBGP's hold time 180 s against
  BIRD's 240 s: 180 s negotiated). One round: it takes three minutes.

Ratios are against the withdraw baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.bgp support modules

from weir.lab.netns import Topology, cleanup_prefix
from weir.nodeagent.bgp import BGPSpeaker, ExaBGPOptions

from tests.bgp.support import VIP, Lab, bgp_config, build

PREFIX = "wbgb"


async def wait_hops(lab: Lab, n: int, limit: float, start: float | None = None) -> float:
    """Seconds from start (now by default) until the router's kernel route for VIP has n
    next hops, polled every 10 ms."""
    start = time.monotonic() if start is None else start
    while len(await asyncio.to_thread(lab.bird.kernel_next_hops, VIP)) != n:
        if time.monotonic() - start > limit:
            raise TimeoutError(f"no route with {n} next hops after {limit}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@dataclass(frozen=True)
class ConvergenceRow:
    name: str
    times: list[float]  # seconds, one per round

    @property
    def median(self) -> float:
        return statistics.median(self.times)


async def run_mode(mode: str, rounds: int, hold: int, gr: bool) -> list[float]:
    cleanup_prefix(PREFIX)
    peer_opts = {"hold_time": hold} if hold else {}
    with Topology(PREFIX) as topo:
        lab = build(topo, topo.workdir(), 3, **peer_opts)  # type: ignore[arg-type]
        speakers = []
        async with contextlib.AsyncExitStack() as stack:
            for node in lab.nodes:
                sp = BGPSpeaker(options=ExaBGPOptions(prefix=("ip", "netns", "exec", node.name)))
                await sp.start()
                stack.push_async_callback(sp.stop, False)
                cfg = bgp_config(
                    node,
                    hold_time_seconds=hold,
                    graceful_restart=gr,
                    graceful_restart_time_seconds=120 if gr else 0,
                )
                await sp.configure(cfg)
                await sp.announce({VIP})
                speakers.append(sp)
            times = []
            victim, sp = lab.nodes[2], speakers[2]
            for _ in range(rounds):
                await wait_hops(lab, 3, 60)
                if mode == "withdraw":
                    t0 = time.monotonic()
                    await sp.announce(set())
                    times.append(await wait_hops(lab, 2, 30, t0))
                    await sp.announce({VIP})
                    continue
                # Hard failure: cable pulled, then the speaker dies (the router cannot see it).
                t0 = time.monotonic()
                victim.run(["ip", "link", "set", "eth0", "down"])
                if sp._proc is not None and sp._proc.pid is not None:
                    os.kill(sp._proc.pid, signal.SIGKILL)
                times.append(await wait_hops(lab, 2, 600, t0))
                victim.run(["ip", "link", "set", "eth0", "up"])  # the supervisor restarts it
        return times


async def run(rounds: int = 3, hold: int = 3, defaults: bool = False) -> list[ConvergenceRow]:
    """The withdraw baseline first, then the hard failures."""
    rows = [
        ConvergenceRow(
            "withdraw (drain) [baseline]", await run_mode("withdraw", rounds, hold, False)
        ),
        ConvergenceRow(f"hard failure, hold {hold}s", await run_mode("fail", rounds, hold, False)),
        ConvergenceRow(
            f"hard failure, hold {hold}s, graceful restart 120s",
            await run_mode("fail", 1, hold, True),
        ),
    ]
    if defaults:
        rows.append(
            ConvergenceRow(
                "hard failure, default timers (hold 180s)", await run_mode("fail", 1, 0, False)
            )
        )
    return rows


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hold", type=int, default=3, help="short hold time, seconds (min 3)")
    p.add_argument("--defaults", action="store_true", help="also BIRD/ExaBGP default timers")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    rows = await run(args.rounds, args.hold, args.defaults)
    base = rows[0].median
    for r in rows:
        ratio = f"  x{r.median / base:,.0f} the withdraw baseline" if r is not rows[0] else ""
        runs = " ".join(f"{t:.3f}" for t in r.times)
        print(f"{r.name:<44} median {r.median:8.3f} s   runs [{runs}]{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
