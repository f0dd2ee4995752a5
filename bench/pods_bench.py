"""New connections per second to pods through the whole path: Weir against a kube-proxy-style
path, side by side (issue 10).

One lab network (python -m weir.lab's): a client, a router with a static ECMP route for the
shop VIP over the three LB nodes, and six pods on three workers behind the router, each pod
running nginx on 8080 (one worker process, a 3-byte answer, no log). wrk in the client opens
a new connection for every request (`Connection: close`). Two ways to carry it, alternating
round by round so that load from elsewhere on the machine hits both alike:

  kube-proxy  each LB node DNATs VIP:80 to a random pod:8080 with nftables and masquerades
              it, as kube-proxy's nftables mode does for a LoadBalancer Service reaching a pod
              on another node; the router routes the pod CIDRs to their workers; replies come
              back through the LB node
  weir        weir-controller and the agents: XDP Maglev on the LB nodes, encapsulation to
              the pod's worker, tc on the worker, replies straight to the client

For the kube-proxy rounds the agents are killed and Weir's programs detached (XDP from the LB
nodes, tc from the workers; a running agent would put them back); for Weir's rounds the
agents start again and attach them from their pins. The figure is connections per second (wrk's
requests/s, each request its own connection), the median over the rounds. Everything runs on
this machine's two cores: wrk, six nginx, the router and the nodes' kernels share them, so
the rates are bounded by CPU, and the comparison is what counts.

    .venv/bin/python bench/pods_bench.py [--rounds 3] [--seconds 5] [--connections 64]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from weir.lab.netns import Host, Topology, cleanup_prefix
from weir.lab.stack import Stack
from weir.lab.topology import NODES, POD_PORT, POD_VIP, PODS, WORKERS, build

PREFIX = "wpb"
NFT_TABLE = "kubeproxy"
VIP_PORT = 80


@dataclass(frozen=True)
class PodsRow:
    mode: str
    rate: float  # new connections per second (median over rounds)
    errors: int  # wrk socket errors and non-2xx answers, all rounds
    rounds: tuple[float, ...]


def nginx_conf(workdir: Path, name: str) -> str:
    d = workdir / f"nginx-{name}"
    d.mkdir(exist_ok=True)
    temps = " ".join(
        f"{kind}_temp_path {d}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    {temps}
    server {{
        listen {POD_PORT} reuseport backlog=8192;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def start_nginx(pod: Host, workdir: Path, name: str) -> None:
    conf = workdir / f"nginx-{name}.conf"
    conf.write_text(nginx_conf(workdir, name))
    pod.popen(["nginx", "-c", str(conf)], log=workdir / f"nginx-{name}.log")


def kube_proxy_rules() -> str:
    pods = [addr for _, addr in PODS.values()]
    pick = ", ".join(f"{i} : {addr}" for i, addr in enumerate(pods))
    to = f"numgen random mod {len(pods)} map {{ {pick} }} : {POD_PORT}"
    return f"""
table ip {NFT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat;
        ip daddr {POD_VIP} tcp dport {VIP_PORT} dnat to {to}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        ct status dnat masquerade
    }}
}}
"""


def kube_proxy(stack: Stack, on: bool) -> None:
    for node in stack.net.nodes.values():
        if on:
            node.sysctl({"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.send_redirects": 0})
            node.nft(kube_proxy_rules())
        else:
            node.run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)
            node.sysctl({"net.ipv4.ip_forward": 0})


def wrk(stack: Stack, seconds: int, connections: int) -> tuple[float, int]:
    out = stack.net.clients["c1"].run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-H", "Connection: close",
         f"http://{POD_VIP}/"],
        timeout=seconds + 60,
    )  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, errors + (int(bad.group(1)) if bad else 0)


def run(rounds: int = 3, seconds: int = 5, connections: int = 64) -> list[PodsRow]:
    cleanup_prefix(PREFIX)
    with Topology(PREFIX) as topo:
        net = build(topo)
        workdir = topo.workdir()
        stack = Stack(net, workdir, "static")
        for name, pod in net.pods.items():
            start_nginx(pod, workdir, name)
        # kube-proxy's path needs the fabric to route pod CIDRs; Weir's does not use them.
        for i, addr in enumerate(WORKERS.values(), start=1):
            net.router.route(f"10.244.{i}.0/24", addr)
        stack.router.start()
        stack.wait_next_hops(NODES, 15)
        stack.start_weir(progress=lambda _: None)
        results: dict[str, list[tuple[float, int]]] = {"kube-proxy": [], "weir": []}
        for _ in range(rounds):
            with stack.weir_paused():
                kube_proxy(stack, True)
                wrk(stack, 1, connections)  # warm-up
                results["kube-proxy"].append(wrk(stack, seconds, connections))
                kube_proxy(stack, False)
            wrk(stack, 1, connections)
            results["weir"].append(wrk(stack, seconds, connections))
        return [
            PodsRow(
                mode,
                statistics.median(r for r, _ in runs),
                sum(e for _, e in runs),
                tuple(round(r) for r, _ in runs),
            )
            for mode, runs in (
                (
                    "kube-proxy-style (nftables DNAT + masquerade on the LB node)",
                    results["kube-proxy"],
                ),
                ("Weir (XDP + encapsulation, tc on the worker, DSR)", results["weir"]),
            )
        ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)  # wrk takes whole seconds
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    rows = run(args.rounds, args.seconds, args.connections)
    base = rows[0].rate
    for r in rows:
        ratio = r.rate / base
        print(f"{r.mode:<62} {r.rate:>8.0f} conn/s  {ratio:.2f}x  errors {r.errors}  {r.rounds}")
    return 0 if rows[1].rate >= base and all(r.errors == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
