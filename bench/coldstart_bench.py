"""Cold start of the data plane's maps: 1,000 Maglev services x 50 backends, M = 16381.

Times, in one run:
- open: Dataplane.open on empty pins (bcc compile, map creation, attach; generic XDP on a
  veth in a namespace of its own, tests/dataplane/support.py's veth_netns);
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weir.nodeagent.dataplane import BackendTarget, Dataplane, DataplaneConfig, Frontend
from weir.nodeagent.maglev import backend_id, build_table

from tests.dataplane.support import bpffs_mount, in_netns, missing_privileges, veth_netns

SIZE = 16381
TARGET_SECONDS = 5.0


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--backends", type=int, default=50)
    args = ap.parse_args()
    if why := missing_privileges():
        print(why, file=sys.stderr)
        return 2
    with bpffs_mount() as fs, veth_netns() as ns, in_netns(ns):
        return bench(fs, args)


def bench(fs: Path, args: argparse.Namespace) -> int:
    cfg = DataplaneConfig(
        interface="wdp0",
        bpffs=fs,
        xdp_mode="generic",
        max_services=max(1024, args.services),
        max_backends=max(65536, args.services * args.backends),
        max_table_slots=2 * SIZE * args.services,
    )
    todo = list(services(args.services, args.backends))

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
        usage = {u.name: u for u in dp.usage()}
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

    maps_part = t_tables + t_apply
    ok = maps_part < TARGET_SECONDS and len(applied) == args.services and rewritten == 0
    print(f"{args.services} services x {args.backends} backends, M = {SIZE}")
    print(f"  open (compile, create maps, attach)   {t_open:7.2f} s")
    print(f"  build {args.services} Maglev tables            {t_tables:7.2f} s")
    print(f"  apply {args.services} services                 {t_apply:7.2f} s")
    print(
        f"  maps part (tables + apply)            {maps_part:7.2f} s   target < "
        f"{TARGET_SECONDS:.0f} s   {'PASS' if ok else 'FAIL'}"
    )
    for name in ("services", "backends", "table_slots"):
        print(f"    {name:<12} {usage[name].used:>10} / {usage[name].capacity}")
    print("restart")
    print(f"  open, adopting the pins                {t_reopen:7.2f} s")
    print(f"  applied() read back ({len(applied)} services)   {t_read:7.2f} s")
    print(f"  apply all again (rewritten: {rewritten})       {t_again:7.2f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
