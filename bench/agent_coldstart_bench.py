"""Agent cold start: a full snapshot of 1,000 Maglev services x 50 backends (M = 16381)
arrives; how long until every map is programmed? Target: under 5 s.

    sudo .venv/bin/python bench/agent_coldstart_bench.py [--services 1000] [--backends 50]

Runs in a network namespace of its own (prefix wagb) on a veth with XDP (generic mode) and
pins in a bpffs of its own. Backend addresses are a pool of distinct IPs on the uplink's
subnet with permanent neighbour entries (fake MACs: nothing is sent to them); every service
has its own 50 (address, port) backends, so the data plane holds services x backends entries
while the resolver looks up the pool once.

Measured side by side in one run:
- baseline: the data plane alone, Dataplane.apply_service for every service with tables
  already built (what the maps part of the cold start costs, bench/coldstart_bench.py);
- agent cold: view reconstruction + hash check (ControllerClient's apply_message), then
  Agent.handle: plan, neighbour lookups, Maglev tables from a cold cache, writes;
- agent restart: a new Dataplane adopting the pins and a new Agent handling the same view
  (everything verified, nothing rewritten).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from weir.lab.netns import Topology, cleanup_prefix, in_netns

PREFIX = "wagb"
SUBNET = ipaddress.ip_network("10.90.0.0/16")
TARGET_SECONDS = 5.0
BASELINE = "baseline: dataplane writes only"
COLD = "agent cold: snapshot -> maps programmed"
RESTART = "restart: snapshot -> verified, nothing rewritten"


@dataclass(frozen=True)
class Options:
    services: int = 1000
    backends: int = 50
    table_size: int = 16381
    pool: int = 5000  # distinct backend addresses


@dataclass
class AgentColdstart:
    opts: Options
    seconds: dict[str, float] = field(default_factory=dict)  # step -> seconds, in order

    @property
    def met(self) -> bool:
        return self.seconds[COLD] < TARGET_SECONDS


def id_of(vip: str) -> str:
    return f"{vip}:80/TCP"


def build_snapshot(services: int, backends: int, pool: list[str], size: int):
    from weir.common import viewhash
    from weir.common.pb import pb

    snap = pb.Snapshot(version=1, node="bench", maglev_seed=42)
    vips = sorted((str(ipaddress.ip_address("198.18.0.0") + i) for i in range(services)), key=id_of)
    for i, vip in enumerate(vips):
        svc = snap.services.add(
            id=id_of(vip),
            vip=vip,
            port=80,
            protocol=pb.PROTOCOL_TCP,
            strategy=pb.STRATEGY_MAGLEV,
            maglev_table_size=size,
        )
        picked = sorted({pool[(i * 7 + j * 131) % len(pool)] for j in range(backends)})
        for addr in picked:
            svc.backends.add(address=addr, port=8000 + i % 1000, weight=1, ready=True)
    snap.hash = viewhash.view_hash(snap)
    return snap


async def measure(pins: Path, args: Options, pool: list[str]) -> dict[str, float]:
    from weir.common.pb import pb
    from weir.nodeagent.agent import Agent
    from weir.nodeagent.backend_macs import BackendMacs
    from weir.nodeagent.balancer import Balancer
    from weir.nodeagent.controller_client import apply_message
    from weir.nodeagent.dataplane import BackendTarget, Dataplane, DataplaneConfig
    from weir.nodeagent.maglev import TableCache, backend_id
    from weir.nodeagent.neighbors import NeighborResolver
    from weir.nodeagent.service import from_pb

    snap = build_snapshot(args.services, args.backends, pool, args.table_size)
    msg = pb.ControllerMessage(snapshot=snap)
    wire = msg.SerializeToString()
    slots = 2 * args.services * args.table_size
    sizes = dict(
        max_services=max(1024, args.services + 16),
        max_backends=1 << (args.services * args.backends * 2).bit_length(),
        max_table_slots=1 << slots.bit_length(),
    )
    out: dict[str, float] = {}

    # Baseline: the data plane alone, tables built beforehand.
    cfg = DataplaneConfig(interface="eth0", bpffs=pins / "base", xdp_mode="generic", **sizes)
    t = time.perf_counter()
    dp = await asyncio.to_thread(Dataplane.open, cfg)
    out["dataplane open (compile/load)"] = time.perf_counter() - t
    cache = TableCache()
    work = []
    mac = b"\x02\x00\x00\x00\x00\x01"
    for svc in snap.services:
        spec = from_pb(svc)
        ids = [backend_id(b.address, b.port, spec.frontend.protocol) for b in spec.backends]
        table = cache.get(ids, spec.table_size, None, snap.maglev_seed)
        targets = [BackendTarget(b.address, b.port, mac) for b in spec.backends]
        work.append((spec.frontend, targets, table))
    t = time.perf_counter()
    dp.set_seed(snap.maglev_seed)
    for fe, targets, table in work:
        dp.apply_service(fe, targets, table)
    out[BASELINE] = time.perf_counter() - t
    dp.close(detach=True)

    cfg = DataplaneConfig(interface="eth0", bpffs=pins / "agent", xdp_mode="generic", **sizes)
    async with NeighborResolver("eth0") as resolver:
        dp = await asyncio.to_thread(Dataplane.open, cfg)
        recorder = OutcomeRecorder()
        balancer = Balancer(dp, BackendMacs(resolver), tables=TableCache())
        agent = Agent(balancer, metrics=recorder)
        await balancer.adopt()
        t = time.perf_counter()
        update = apply_message(None, "bench", pb.ControllerMessage.FromString(wire))
        ack = await agent.handle(update)
        out[COLD] = time.perf_counter() - t
        assert not ack.service_errors, ack.service_errors[:3]
        assert recorder.last["written"] == args.services, recorder.last
        dp.close()  # as an agent that stops: attached and pinned

        t = time.perf_counter()
        dp = await asyncio.to_thread(Dataplane.open, cfg)
        out["restart: dataplane adopt"] = time.perf_counter() - t
        balancer = Balancer(dp, BackendMacs(resolver), tables=TableCache())
        agent = Agent(balancer, metrics=recorder)
        t = time.perf_counter()
        await balancer.adopt()
        out["restart: agent adopt (read back pinned services)"] = time.perf_counter() - t
        t = time.perf_counter()
        update = apply_message(None, "bench", pb.ControllerMessage.FromString(wire))
        ack = await agent.handle(update)
        out[RESTART] = time.perf_counter() - t
        assert not ack.service_errors and recorder.last["written"] == 0, recorder.last
        dp.close(detach=True)
    return out


class OutcomeRecorder:
    """The agent's metrics hook, keeping what the last apply did."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def set_services(self, *counts: int) -> None:
        pass

    def set_maps(self, usage: object) -> None:
        pass

    def observe_apply(self, version: int, seconds: float, outcome: dict[str, int]) -> None:
        self.last = dict(outcome)


def _child(ns: str, pins: Path, args: Options, pool: list[str], conn) -> None:
    # Threads started from here on (asyncio.to_thread's) are created in the namespace too.
    with in_netns(ns):
        try:
            conn.send(("ok", asyncio.run(measure(pins, args, pool))))
        except BaseException as exc:
            import traceback

            traceback.print_exc()
            conn.send(("error", repr(exc)))


def run(opts: Options) -> AgentColdstart:
    """The measurement runs in a forked child, whose whole process sits in the LB node's
    namespace (the agent's netlink and bcc calls run in several threads)."""
    from weir.common.logs import configure

    configure("console", "warning")
    cleanup_prefix(PREFIX)
    pool = [str(SUBNET.network_address + 2 + i) for i in range(opts.pool)]
    with Topology(PREFIX) as topo:
        work = topo.workdir()
        pins = topo.bpffs(work / "bpf")
        lb, peer = topo.host("lb"), topo.host("peer")
        topo.wire(lb, peer, "10.90.0.1/16", "10.90.255.254/16", a_iface="eth0", b_iface="eth0")
        batch = work / "neighbours"
        batch.write_text(
            "".join(
                f"neigh replace {a} lladdr 02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:"
                f"{i >> 8 & 255:02x}:{i & 255:02x} dev eth0 nud permanent\n"
                for i, a in enumerate(pool)
            )
        )
        lb.run(["ip", "-batch", str(batch)], timeout=120)
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(lb.name, pins, opts, pool, child))
        proc.start()
        try:
            status, result = parent.recv() if parent.poll(600) else ("error", "timeout")
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    if status != "ok":
        raise RuntimeError(f"agent cold start failed: {result}")
    return AgentColdstart(opts, result)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=Options.services)
    p.add_argument("--backends", type=int, default=Options.backends)
    p.add_argument("--table-size", type=int, default=Options.table_size)
    p.add_argument("--pool", type=int, default=Options.pool, help="distinct backend addresses")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces, XDP, bpffs)", file=sys.stderr)
        return 2
    res = run(Options(args.services, args.backends, args.table_size, args.pool))
    o = res.opts
    print(
        f"agent cold start: {o.services} services x {o.backends} backends, "
        f"M={o.table_size}, {o.pool} distinct backend addresses"
    )
    for name, seconds in res.seconds.items():
        print(f"  {name:<50} {seconds:8.3f} s")
    base = res.seconds[BASELINE]
    print(f"  ratio agent cold / dataplane writes only       {res.seconds[COLD] / base:8.2f}")
    print(f"  ratio agent restart / dataplane writes only    {res.seconds[RESTART] / base:8.2f}")
    print(f"  target: cold start under 5 s: {'PASS' if res.met else 'FAIL'}")
    return 0 if res.met else 1


if __name__ == "__main__":
    sys.exit(main())
