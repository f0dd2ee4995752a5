"""Cold start of the data plane's maps: 1,000 Maglev services x 50 backends, M = 16381.

Times, in one run:
- open: Dataplane.open on empty pins (bcc compile, map creation, attach; generic XDP on a
  veth in a namespace of its own);
- tables: nodeagent.maglev.build_table for every service (each its own 50 backends);
- apply: Dataplane.apply_service for every service (backend entries, both table halves
  reserved, the active one written through the mmap'ed slot pool, one commit each);
- total maps part = tables + apply. Target (issue 3): under 5 s.
Then a restart: open again (adopting the pins), applied() read back, and every service
applied again unchanged (each call must return False and write nothing).

Run (root): .venv/bin/python bench/coldstart_bench.py [--services 1000] [--backends 50]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.dataplane.support

from weir.lab import bpffs
from weir.lab.netns import Topology
from weir.nodeagent.dataplane import BackendTarget, Dataplane, DataplaneConfig, Frontend
from weir.nodeagent.maglev import backend_id, build_table

from tests.dataplane.support import missing_privileges

SIZE = 16381
TARGET_SECONDS = 5.0
PREFIX = "wcsb"


@dataclass(frozen=True)
class ColdstartResult:
    """Seconds, and what the maps held."""

    services: int
    backends: int
    open: float  # compile, create maps, attach
    tables: float  # build every Maglev table
    apply: float  # apply every service
    usage: dict[str, tuple[int, int]]  # map -> (used, capacity)
    reopen: float  # open again, adopting the pins
    applied: int  # services read back
    read: float  # applied() read back
    again: float  # apply all again
    rewritten: int  # services the second apply rewrote (must be 0)

    @property
    def maps_part(self) -> float:
        return self.tables + self.apply

    @property
    def met(self) -> bool:
        return (
            self.maps_part < TARGET_SECONDS and self.applied == self.services and not self.rewritten
        )


def services(count: int, backends: int):
    for s in range(count):
        vip = f"10.{100 + s // 250}.{s % 250}.1"
        bes = [
            BackendTarget(
                f"10.{s // 250}.{s % 250}.{b + 1}",
                8080,
                bytes([2, 0, s >> 8, s & 255, 0, b]),
            )
            for b in range(backends)
        ]
        yield Frontend(f"{vip}:80/TCP", vip, 80, 6), bes


def run(count: int = 1000, backends: int = 50) -> ColdstartResult:
    with bpffs.mounted(PREFIX) as fs, Topology(f"{PREFIX}-{uuid.uuid4().hex[:8]}") as topo:
        node = topo.host("node")
        node.veth("wdp0", "wdp1")
        with node.entered():
            return measure(fs / "weir", count, backends)


def measure(pins: Path, count: int, backends: int) -> ColdstartResult:
    cfg = DataplaneConfig(
        interface="wdp0",
        bpffs=pins,
        xdp_mode="generic",
        max_services=max(1024, count),
        max_backends=max(65536, count * backends),
        max_table_slots=2 * SIZE * count,
    )
    todo = list(services(count, backends))

    t0 = time.perf_counter()
    dp = Dataplane.open(cfg)
    t_open = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        tables = [
            build_table([backend_id(b.address, b.port, "TCP") for b in bes], SIZE)
            for _, bes in todo
        ]
        t_tables = time.perf_counter() - t0
        t0 = time.perf_counter()
        for (fe, bes), table in zip(todo, tables, strict=True):
            dp.apply_service(fe, bes, table)
        t_apply = time.perf_counter() - t0
        usage = {u.name: (u.used, u.capacity) for u in dp.usage()}
    finally:
        dp.close()

    t0 = time.perf_counter()
    dp = Dataplane.open(cfg)
    t_reopen = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        applied = dp.applied()
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        rewritten = sum(
            dp.apply_service(fe, bes, table) for (fe, bes), table in zip(todo, tables, strict=True)
        )
        t_again = time.perf_counter() - t0
    finally:
        dp.close(detach=True)
    return ColdstartResult(
        count, backends, t_open, t_tables, t_apply, usage, t_reopen, len(applied), t_read,
        t_again, rewritten,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--backends", type=int, default=50)
    args = ap.parse_args()
    if why := missing_privileges():
        print(why, file=sys.stderr)
        return 2
    r = run(args.services, args.backends)
    print(f"{r.services} services x {r.backends} backends, M = {SIZE}")
    print(f"  open (compile, create maps, attach)   {r.open:7.2f} s")
    print(f"  build {r.services} Maglev tables            {r.tables:7.2f} s")
    print(f"  apply {r.services} services                 {r.apply:7.2f} s")
    print(
        f"  maps part (tables + apply)            {r.maps_part:7.2f} s   target < "
        f"{TARGET_SECONDS:.0f} s   {'PASS' if r.met else 'FAIL'}"
    )
    for name in ("services", "backends", "table_slots"):
        used, capacity = r.usage[name]
        print(f"    {name:<12} {used:>10} / {capacity}")
    print("restart")
    print(f"  open, adopting the pins                {r.reopen:7.2f} s")
    print(f"  applied() read back ({r.applied} services)   {r.read:7.2f} s")
    print(f"  apply all again (rewritten: {r.rewritten})       {r.again:7.2f} s")
    return 0 if r.met else 1


if __name__ == "__main__":
    sys.exit(main())
