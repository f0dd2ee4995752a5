"""New TCP connections per second and their latency through the lab: Weir vs nftables DNAT.

One lab network (python -m weir.lab's: clients, a router with an ECMP route over three LB nodes,
four HTTP backends), two ways to balance on the LB nodes, measured in the same run:
  baseline  nftables DNAT to a random backend + masquerade on each LB node, what kube-proxy's
            nftables mode does for a LoadBalancer Service: replies come back through the node
  weir      weir-controller + weir-agent: XDP Maglev, replies straight from the backends (DSR)
The two alternate, round by round (load from elsewhere on the machine hits both alike): for
the nftables rounds the agents are stopped and their programs detached (Stack.weir_paused).
Each measurement: a short warm-up, then a client in c1 opening new connections (one HTTP
GET each, closed with a reset) from `concurrency` workers for `seconds`; connections per
second and connect-to-answer latency p50/p99; the median over the rounds is reported. The
client and the servers are Python on the same two cores, so the rates say more about them
than about the data path. No target is set by the issues: the comparison is the result.

    .venv/bin/python bench/conn_bench.py [--rounds 3] [--seconds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from weir.lab import traffic
from weir.lab.client import RateSummary
from weir.lab.netns import Host, Topology, cleanup_prefix
from weir.lab.stack import TARGET, WORKDIR, Stack
from weir.lab.topology import BACKENDS, NODES, PORT, PREFIX, VIP, build

NFT_TABLE = "wlb_kubeproxy"


@dataclass(frozen=True)
class ConnResult:
    mode: str
    connections: int
    errors: int
    seconds: float
    rate: float  # connections per second
    p50_ms: float
    p99_ms: float
    rounds: tuple[float, ...] = ()  # the rate of each round


def nft_rules() -> str:
    """kube-proxy nftables mode, reduced to one Service: DNAT to a random endpoint, then
    masquerade what was DNATed so the replies return through this node."""
    endpoints = ", ".join(f"{i} : {addr}" for i, addr in enumerate(BACKENDS.values()))
    pick = f"numgen random mod {len(BACKENDS)} map {{ {endpoints} }}"
    return f"""
table ip {NFT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} tcp dport {PORT} dnat to {pick}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat masquerade
    }}
}}
"""


def nft_on(node: Host) -> None:
    node.sysctl({"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.send_redirects": 0})
    node.nft(nft_rules())


def nft_off(node: Host) -> None:
    node.run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)
    node.sysctl({"net.ipv4.ip_forward": 0})


def measure(stack: Stack, seconds: float, concurrency: int) -> RateSummary:
    c1 = stack.net.clients["c1"]
    traffic.rate(c1, TARGET, 0.5, concurrency)  # warm-up: ARP, conntrack, the first accepts
    return traffic.rate(c1, TARGET, seconds, concurrency)


def median_result(mode: str, runs: list[RateSummary]) -> ConnResult:
    med = statistics.median
    return ConnResult(
        mode,
        sum(r.count for r in runs),
        sum(r.errors for r in runs),
        sum(r.seconds for r in runs),
        med(r.rate for r in runs),
        med(r.p50_ms for r in runs),
        med(r.p99_ms for r in runs),
        tuple(round(r.rate) for r in runs),
    )


def run(
    rounds: int = 3,
    seconds: float = 3.0,
    concurrency: int = 16,
    progress: Callable[[str], None] = print,
) -> list[ConnResult]:
    """Build the lab network, alternate nftables and Weir rounds; always clean up."""
    cleanup_prefix(PREFIX, WORKDIR)
    with Topology(PREFIX) as topo:
        stack = Stack(build(topo), topo.workdir(WORKDIR), "static")
        stack.start_backends()
        stack.router.start()
        stack.wait_next_hops(NODES, 15)
        stack.start_weir(progress=lambda _: None)
        nft_runs, weir_runs = [], []
        for rnd in range(rounds):
            progress(f"conn bench round {rnd + 1}/{rounds}: nftables DNAT, then Weir")
            with stack.weir_paused():
                for node in stack.net.nodes.values():
                    nft_on(node)
                nft_runs.append(measure(stack, seconds, concurrency))
                for node in stack.net.nodes.values():
                    nft_off(node)
            weir_runs.append(measure(stack, seconds, concurrency))
        return [
            median_result("nftables DNAT (baseline)", nft_runs),
            median_result("Weir XDP + DSR", weir_runs),
        ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="per mode per round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = run(args.rounds, args.seconds, args.concurrency)
    base = results[0]
    print(f"{'mode':<26} {'conns':>7} {'errors':>6} {'conn/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for r in results:
        print(
            f"{r.mode:<26} {r.connections:>7} {r.errors:>6} {r.rate:>8.0f} {r.p50_ms:>7.2f}"
            f" {r.p99_ms:>7.2f}   rate {r.rate / base.rate:.2f}x baseline, rounds {r.rounds}"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
