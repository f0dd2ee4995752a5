"""Per-packet cost of the backend node's tc programs against minimal tc programs, side by side.

BPF_PROG_TEST_RUN runs each program `repeat` times in the kernel on one skb and reports the
mean time per run. Target (issue 10): decapsulate and translate (bpf/weir_tc.c ingress, a
packet of an established flow) at most 3 x a minimal tc program that parses the same
headers.

Method notes:
- test_run runs every repetition on the same skb, so the measured builds put the packet back
  after each run (-DWEIR_BENCH, bpf/weir_tc_bench.h: the outer headers pushed back, the
  translation undone). The baseline pays the same: "minimal + decap/rewind" parses the same
  headers, takes the outer headers off and puts them back with the same code. The ratio is
  Weir's build over that baseline; "minimal (parse only)" shows what the bench's own
  decap/rewind costs.
- egress (a pod's reply translated back to VIP:port) is built the same way: the reply's
  address and port are written back after each run.
- Each measurement is the best of --rounds runs, the programs interleaved in every round.

Run (root): .venv/bin/python bench/tc_bench.py [--repeat 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.dataplane.support

from per_packet import PacketRow  # noqa: E402
from weir.lab import bpffs  # noqa: E402
from weir.lab.netns import Topology  # noqa: E402
from weir.nodeagent.dataplane import (  # noqa: E402
    bpfsys,
    layout,
    nat,
)
from weir.nodeagent.dataplane.nat import (  # noqa: E402
    LocalBackend,
    NatConfig,
    NatDataplane,
    NatSettings,
)

from tests.dataplane.support import missing_privileges  # noqa: E402

PREFIX = "wtb"
TC_ACT_UNSPEC = 0xFFFFFFFF
NODE, LB, VIP, POD, CLIENT = "10.1.0.5", "10.0.0.11", "192.0.2.10", "10.244.1.7", "172.16.5.9"
TARGET = 3.0


@dataclass(frozen=True)
class Options:
    repeat: int = 1_000_000
    rounds: int = 5


def frames() -> tuple[bytes, bytes]:
    """(an encapsulated packet of the flow, the pod's reply), as scapy builds them."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    header = bytes([1, 0]) + (8080).to_bytes(2, "big") + bytes(map(int, POD.split(".")))
    inner = IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="A") / Raw(b"x" * 64)
    outer = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=LB, dst=NODE)
        / UDP(sport=0xC123, dport=6093, chksum=0)
        / Raw(header)
        / inner
    )
    reply = (
        Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
        / IP(src=POD, dst=CLIENT)
        / TCP(sport=8080, dport=40000, flags="A")
    )
    return bytes(outer), bytes(reply / Raw(b"y" * 64))


def compile_programs(cfg: NatConfig):
    from bcc import BPF

    weir = nat.compile_programs(cfg, {}, ("-DWEIR_BENCH",))
    flags = [f"-I{layout.BPF_DIR}", "-DWEIR_BENCH"]
    minimal = BPF(src_file=str(HERE / "tc_minimal.c").encode(), cflags=flags)
    return weir, minimal


def timed(fd: int, frame: bytes, repeat: int) -> int:
    run = bpfsys.test_run(fd, frame, repeat=repeat)
    if run.retval != TC_ACT_UNSPEC:
        raise SystemExit(f"program returned {run.retval:#x}: bench is broken")
    return run.duration_ns


def run(opts: Options) -> list[PacketRow]:
    with bpffs.mounted(PREFIX) as fs, Topology(f"{PREFIX}-{uuid.uuid4().hex[:8]}") as topo:
        node = topo.host("node")
        node.veth("wtb0", "wtb1")
        with node.entered():
            return rows(best_times(fs / "weir", opts))


def best_times(pins: Path, opts: Options) -> dict[str, int]:
    cfg = NatConfig(interface="wtb0", bpffs=pins)
    nat = NatDataplane.open(cfg)
    programs = compile_programs(cfg)
    try:
        nat.configure(NatSettings(NODE))
        nat.set_lb_nodes([LB])
        nat.set_local_backends([LocalBackend(VIP, 80, 6, POD, 8080)])
        weir, minimal = programs
        fds = {
            "minimal (parse only)": minimal.load_func(b"tc_minimal", minimal.SCHED_CLS).fd,
            "minimal + decap/rewind": minimal.load_func(b"tc_minimal_decap", minimal.SCHED_CLS).fd,
            "ingress: decap + translate": weir.load_func(
                layout.TC_INGRESS_FUNC.encode(), weir.SCHED_CLS
            ).fd,
            "egress: reply translated back": weir.load_func(
                layout.TC_EGRESS_FUNC.encode(), weir.SCHED_CLS
            ).fd,
        }
        encapsulated, reply = frames()
        best: dict[str, int] = {}
        for _ in range(opts.rounds):
            for name, fd in fds.items():
                frame = reply if name.startswith("egress") else encapsulated
                ns = timed(fd, frame, opts.repeat)
                best[name] = min(best.get(name, ns), ns)
        return best
    finally:
        for b in programs:
            b.cleanup()
        nat.detach()


def rows(best: dict[str, int]) -> list[PacketRow]:
    base = "minimal + decap/rewind"
    return [
        PacketRow("minimal (parse only)", best["minimal (parse only)"]),
        PacketRow(base, best[base]),
        PacketRow(
            "ingress: decap + translate",
            best["ingress: decap + translate"],
            base,
            best[base],
            TARGET,
        ),
        PacketRow(
            "egress: reply translated back",
            best["egress: reply translated back"],
            "minimal (parse only)",
            best["minimal (parse only)"],
        ),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=Options.repeat)
    ap.add_argument("--rounds", type=int, default=Options.rounds)
    args = ap.parse_args()
    if why := missing_privileges():
        print(why, file=sys.stderr)
        return 2
    out = run(Options(args.repeat, args.rounds))
    print(f"{'case':32} {'ns/pkt':>7} {'baseline':>9} {'ratio':>6} {'target':>7}")
    for r in out:
        if r.baseline:
            verdict = f"{r.target:.1f}x {'PASS' if r.met else 'FAIL'}" if r.target else "-"
            print(f"{r.case:32} {r.ns:7} {r.baseline_ns:9} {r.ratio:6.2f} {verdict:>7}")
        else:
            print(f"{r.case:32} {r.ns:7}")
    return 0 if all(r.met for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
