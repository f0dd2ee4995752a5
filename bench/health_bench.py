"""The agent's health checks: CPU for 1,000 backends checked every second from one agent
(issue 14: under 5 % of a core).

Runs nodeagent.health.checker.HealthChecker, as the agent does (its TCP checks' schedule,
marked non-blocking sockets and rise/fall bookkeeping in C, health/_tcpcheck.c); the path program
and MAC resolution are left out (they cost the checker nothing per check: one map write per
target when it appears). After a warm-up, measures this process's CPU time (user + system,
getrusage) over a window and prints it as a share of one core, with the checks actually
completed per second; then the kernel floor: the checker's system calls back to back with
no checker at all, at the same rate.

What an agent pays on a real node is its own half of each handshake (SYN out, SYN-ACK in,
ACK out, RST out); the backend's half runs on the backend's machine. The reflector path
measures exactly that: the checker in one network namespace, pinned to CPU 0, connects over
a veth pair whose far end runs an XDP program (synack_reflector.c) that answers each SYN
with a SYN-ACK and drops the rest, so no listener socket work exists anywhere. Both ends
poll their receive queue in a threaded-NAPI kernel thread of their own: the checker's end
on CPU 0 (a NIC interrupt landing on the agent's core, the dearer case), the reflector's on
CPU 1. The checker's end's thread does what a NIC's receive path does on the node (SYN-ACK
in, ACK out, waking the checker), and its CPU time is read exactly (schedstat), so the node
pays the checker's process plus that thread; the reflector's thread is the backends' half
and is only shown. This kernel has no IRQ time accounting (softirqs run while a process is
on the CPU are charged to it): with threaded NAPI no receive softirq runs in the checker's
time, and what a send costs (the veth hand-off, a wake-up of the far thread) is charged to
the checker as a NIC driver's transmit would be.

Two earlier methods, kept for comparison, both charge the checker more than a node pays.
veth: listeners in the other namespace, their end's receive processing steered to CPU 1 by
RPS and the checker's end to CPU 0: the RPS hand-off (an IPI raised on the sending CPU) is
charged to the checker; its floor is also measured with the listeners' steering off (their
half in the checker's system calls). loopback: listeners on 127.0.0.1, where the kernel runs
the listener's half of every handshake inside the checker's own system calls.

    sudo .venv/bin/python bench/health_bench.py [--backends 1000] [--interval 1] [--seconds 10]
        [--rounds 1] [--no-loopback]

The benchmark report (bench/report.py, section health) takes run()'s rows.

Root: SO_MARK needs CAP_NET_ADMIN; namespaces, XDP and RPS need root too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.nodeagent.standins: the loopback checker

from weir.common.aio import Generation  # noqa: E402
from weir.lab.netns import Host, Topology, cleanup_prefix, in_netns  # noqa: E402
from weir.nodeagent.dataplane import bpfsys, layout  # noqa: E402
from weir.nodeagent.dataplane.hcpath import mark  # noqa: E402
from weir.nodeagent.health import checker as checker_module  # noqa: E402
from weir.nodeagent.health._tcpcheck import disconnect  # noqa: E402
from weir.nodeagent.health.targets import Check, Target  # noqa: E402
from weir.nodeagent.health.tcp import TcpLoop  # noqa: E402
from weir.nodeagent.service import NodeSettings  # noqa: E402

from tests.nodeagent.standins import loopback_checker  # noqa: E402

TARGET_SHARE = 0.05
FLOOR_CONNECTS = 5000
BASE_PORT = 20000
PORTS = 10  # listeners: each takes 1/PORTS of the connections
CHECKER_CPU, LISTENER_CPU = 0, 1
PREFIX = "hcb"
AGENT_ADDR, BACKEND_ADDR = "10.98.14.1", "10.98.14.2"
VETH = "eth1"  # both ends of the pair, each in its namespace
LOOPBACK = "127.0.0.1"
# The reflector's pair: no listener behind it, an XDP program answers the SYNs.
REFLECT_VETH = "eth2"
REFLECT_AGENT, REFLECT_ADDR = "10.98.15.1", "10.98.15.2"
REFLECTOR = HERE / "synack_reflector.c"
XDP_NATIVE = bpfsys.XDP_FLAGS_DRV_MODE

SERVER = """
import os, selectors, socket, sys
os.sched_setaffinity(0, {int(sys.argv[4])})
sel = selectors.DefaultSelector()
for port in range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port))
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
    path: str  # "veth": listeners in another namespace, their half on the other CPU
    backends: int
    interval: float
    seconds: float
    cpu_share: float  # of one core: user + system
    user_share: float  # the checker's Python
    checks_per_second: float
    failing: int
    # NET_RX softirqs per second on each CPU over the window (the whole machine's)
    net_rx: tuple[float, ...] = ()
    # The kernel floor: the checker's system calls (mark, connect, epoll wait, disconnect) back
    # to back with no checker, as a share of a core at the same rate.
    floor_share: float = 0.0
    # veth only: the floor again with the listener end's RPS off, so that its half of each
    # handshake runs in the checker's system calls as over loopback (checks the steering)
    unsteered_floor_share: float = 0.0
    # reflector only: the CPU of the agent end's receive thread (threaded NAPI on the
    # checker's CPU: SYN-ACK in, ACK out), part of what the node pays, and of the far end's
    # (the reflector's, on the other CPU: the backend's half, not the node's)
    receive_share: float = 0.0
    reflector_share: float = 0.0
    # reflector only: the floor's receive thread share, at the same rate
    floor_receive_share: float = 0.0

    @property
    def node_share(self) -> float:
        """What the node pays: the checker's process and its receive processing."""
        return self.cpu_share + self.receive_share


async def measure(
    path: str,
    address: str,
    backends: int,
    interval: float,
    seconds: float,
    threads: tuple[int, ...] = (),
) -> HealthBench:
    """The checker's CPU over one window, checking backends listening on address; and
    the CPU of each of threads (kernel threads, by pid) over the same window."""
    changes = Generation()
    checker = loopback_checker(changes, refresh=3600)
    check = Check("tcp", interval, min(1.0, interval), rise=2, fall=3)
    targets = {
        Target("bench", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 80, address,
               BASE_PORT + i % PORTS): check
        for i in range(backends)
    }  # fmt: skip
    checker.apply(targets, NodeSettings(load_balancer=True, address=address))
    with _counted_probes() as counted:
        task = asyncio.create_task(checker.run())
        try:
            await asyncio.sleep(interval * 2)  # every loop started and spread out
            before, rx_before, done_before = _cpu(), _net_rx(), counted()
            threads_before = [_thread_cpu(t) for t in threads]
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            after, rx_after, done = _cpu(), _net_rx(), counted() - done_before
            threads_cpu = [_thread_cpu(t) - b for t, b in zip(threads, threads_before, strict=True)]
            elapsed = time.monotonic() - t0
            failing = len(checker.report()[1])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    user = (after[0] - before[0]) / elapsed
    cpu = user + (after[1] - before[1]) / elapsed
    net_rx = tuple((b - a) / elapsed for a, b in zip(rx_before, rx_after, strict=True))
    row = HealthBench(path, backends, interval, elapsed, cpu, user, done / elapsed, failing,
                      net_rx)  # fmt: skip
    if threads:
        receive, reflector = (c / elapsed for c in threads_cpu)
        row = replace(row, receive_share=receive, reflector_share=reflector)
    return row


def _cpu() -> tuple[float, float]:
    """(user, system) seconds of this process, including the softirq work the kernel runs
    while it is on the CPU (this kernel has no separate IRQ time accounting)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _thread_cpu(pid: int) -> float:
    """CPU seconds a thread has run (the scheduler's own count, in ns: no tick sampling)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def _net_rx() -> list[int]:
    """NET_RX softirqs so far, per CPU."""
    for line in Path("/proc/softirqs").read_text().splitlines():
        name, *counts = line.split()
        if name == "NET_RX:":
            return [int(c) for c in counts]
    raise RuntimeError("no NET_RX line in /proc/softirqs")


@contextlib.contextmanager
def _counted_probes() -> Iterator[Callable[[], int]]:
    """Count the TCP checks completed (the C object's count), by noting the checker's
    TcpLoop for a while."""
    made: list[TcpLoop] = []

    def noted(*args: Any) -> TcpLoop:
        made.append(TcpLoop(*args))
        return made[-1]

    checker_module.TcpLoop = noted  # type: ignore[assignment,misc]
    try:
        yield lambda: sum(m.checks.completed for m in made)
    finally:
        checker_module.TcpLoop = TcpLoop  # type: ignore[misc]


def floor(connects: int, address: str, thread: int | None = None) -> tuple[float, float]:
    """CPU seconds per connect, done the cheapest way with the checker's system calls (mark,
    connect, epoll wait, disconnect, on one socket kept throughout and registered once, edge
    triggered): one after the other, no event loop; and those of thread (the receive thread)
    per connect over the same run."""
    poller = select.epoll()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    poller.register(sock.fileno(), select.EPOLLOUT | select.EPOLLET)
    before = _cpu()
    thread_before = 0.0 if thread is None else _thread_cpu(thread)
    for i in range(connects):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark(i % 1024))
        sock.connect_ex((address, BASE_PORT + i % PORTS))
        poller.poll(1)
        disconnect(sock.fileno())
    after = _cpu()
    thread_cpu = 0.0 if thread is None else _thread_cpu(thread) - thread_before
    sock.close()
    poller.close()
    return (after[0] + after[1] - before[0] - before[1]) / connects, thread_cpu / connects


def steer(host: Host, cpu: int | None) -> None:
    """Process what host's end of the veth receives on cpu (RPS), or where it arrives."""
    mask = "0" if cpu is None else format(1 << cpu, "x")
    host.run(["tee", f"/sys/class/net/{VETH}/queues/rx-0/rps_cpus"], input=mask)


def _listen(popen: Any, address: str) -> subprocess.Popen:
    """Start the listener process (pinned to LISTENER_CPU) and wait until it listens."""
    args = [sys.executable, "-c", SERVER, address, str(BASE_PORT), str(PORTS), str(LISTENER_CPU)]
    server: subprocess.Popen = popen(args, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return server


def _veth_round(agent: Host, node: Host, backends: int, interval: float, seconds: float
                ) -> HealthBench:  # fmt: skip
    with in_netns(agent.name):
        row = asyncio.run(measure("veth", BACKEND_ADDR, backends, interval, seconds))
        steered, _ = floor(FLOOR_CONNECTS, BACKEND_ADDR)
        steer(node, None)
        try:
            unsteered, _ = floor(FLOOR_CONNECTS, BACKEND_ADDR)
        finally:
            steer(node, LISTENER_CPU)
    rate = row.checks_per_second
    return replace(row, floor_share=steered * rate, unsteered_floor_share=unsteered * rate)


def _reflector_round(agent: Host, napi: tuple[int, int], backends: int, interval: float,
                     seconds: float) -> HealthBench:  # fmt: skip
    with in_netns(agent.name):
        row = asyncio.run(measure("reflector", REFLECT_ADDR, backends, interval, seconds, napi))
        per_connect, receive = floor(FLOOR_CONNECTS, REFLECT_ADDR, napi[0])
    rate = row.checks_per_second
    return replace(row, floor_share=per_connect * rate, floor_receive_share=receive * rate)


def _napi_threads() -> set[int]:
    """The pids of the kernel's threaded-NAPI pollers ("napi/<device>-<id>")."""
    found = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().startswith("napi/"):
                found.add(int(comm.parent.name))
    return found


def _threaded(host: Host, iface: str, cpu: int) -> int:
    """Poll iface's receive queue in a kernel thread of its own (threaded NAPI), pinned to
    cpu; returns its pid. The thread's CPU time is then its receive processing, exactly."""
    before = _napi_threads()
    host.run(["tee", f"/sys/class/net/{iface}/threaded"], input="1")
    new = _napi_threads() - before
    if len(new) != 1:
        raise RuntimeError(f"{iface}: expected one new NAPI thread, found {sorted(new)}")
    pid = new.pop()
    os.sched_setaffinity(pid, {cpu})
    return pid


@contextlib.contextmanager
def reflector(agent: Host, node: Host) -> Iterator[tuple[int, int]]:
    """The SYN-ACK reflector (synack_reflector.c, native XDP) on node's end of the
    REFLECT_VETH pair, and an XDP_PASS program on agent's (without one, a veth drops the
    frames its peer sends back with XDP_TX); both ends' receive processing in NAPI threads
    of their own, the agent's on the checker's CPU (a NIC's interrupts on the agent's core),
    the reflector's on the other. Yields (agent's thread, reflector's thread)."""
    from bcc import BPF  # late: bcc only where the bench runs

    bpf = BPF(src_file=str(REFLECTOR).encode(), cflags=[f"-I{layout.BPF_DIR}"])
    attached: list[tuple[Host, int]] = []
    try:
        for host, func in ((node, b"synack_reflector"), (agent, b"xdp_pass")):
            with in_netns(host.name):
                ifindex = socket.if_nametoindex(REFLECT_VETH)
                bpfsys.xdp_attach(ifindex, bpf.load_func(func, BPF.XDP).fd, XDP_NATIVE)
            attached.append((host, ifindex))
        # Checksums in full: a veth passes TCP's partial one on, which the reflected SYN-ACK
        # would keep.
        agent.run(["ethtool", "-K", REFLECT_VETH, "tx", "off"])
        far = _threaded(node, REFLECT_VETH, LISTENER_CPU)
        near = _threaded(agent, REFLECT_VETH, CHECKER_CPU)
        yield near, far
    finally:
        for host, ifindex in attached:
            with in_netns(host.name):
                bpfsys.xdp_detach(ifindex, XDP_NATIVE)
        bpf.cleanup()


def _loopback_round(backends: int, interval: float, seconds: float) -> HealthBench:
    row = asyncio.run(measure("loopback", LOOPBACK, backends, interval, seconds))
    per_connect, _ = floor(FLOOR_CONNECTS, LOOPBACK)
    return replace(row, floor_share=per_connect * row.checks_per_second)


def run(
    backends: int, interval: float, seconds: float, rounds: int, loopback: bool = True
) -> list[HealthBench]:
    """rounds measurements, each over the veth pair then (loopback) over loopback; builds
    the namespaces and listeners once and always removes them (root)."""
    cleanup_prefix(PREFIX)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CHECKER_CPU})
    loop_server = None
    try:
        with Topology(PREFIX) as topo:
            agent, node = topo.host("agent"), topo.host("backends")
            topo.wire(agent, node, f"{AGENT_ADDR}/24", f"{BACKEND_ADDR}/24",
                      a_iface=VETH, b_iface=VETH)  # fmt: skip
            topo.wire(agent, node, f"{REFLECT_AGENT}/24", f"{REFLECT_ADDR}/24",
                      a_iface=REFLECT_VETH, b_iface=REFLECT_VETH)  # fmt: skip
            steer(agent, CHECKER_CPU)
            steer(node, LISTENER_CPU)
            _listen(node.popen, BACKEND_ADDR)
            if loopback:
                loop_server = _listen(subprocess.Popen, LOOPBACK)
            rows = []
            with reflector(agent, node) as napi:
                for _ in range(rounds):
                    rows.append(_reflector_round(agent, napi, backends, interval, seconds))
                    rows.append(_veth_round(agent, node, backends, interval, seconds))
                    if loopback:
                        rows.append(_loopback_round(backends, interval, seconds))
            return rows
    finally:
        if loop_server is not None:
            loop_server.kill()
            loop_server.wait()
        os.sched_setaffinity(0, affinity)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", type=int, default=1000)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-loopback", action="store_true", help="only the veth measurement")
    args = p.parse_args(argv)
    for r in run(args.backends, args.interval, args.seconds, args.rounds, not args.no_loopback):
        rx = " ".join(f"cpu{i} {n:.0f}" for i, n in enumerate(r.net_rx))
        print(f"path                {r.path}")
        print(f"backends            {r.backends} at {r.interval:g} s intervals")
        print(f"checks per second   {r.checks_per_second:.0f}")
        print(f"failing             {r.failing}")
        print(f"cpu                 {r.cpu_share * 100:.2f} % of one core over {r.seconds:.1f} s")
        print(f"  of which user     {r.user_share * 100:.2f} %")
        print(f"kernel floor        {r.floor_share * 100:.2f} % (the connects alone, no checker)")
        if r.path == "reflector":
            print(
                f"receive thread      {r.receive_share * 100:.2f} % (SYN-ACK in, ACK out, "
                f"on the checker's CPU); floor's {r.floor_receive_share * 100:.2f} %"
            )
            print(f"node pays           {r.node_share * 100:.2f} % (checker + receive thread)")
            print(f"reflector thread    {r.reflector_share * 100:.2f} % (the backends' half, "
                  "other CPU, not counted)")  # fmt: skip
        if r.path == "veth":
            print(f"  unsteered         {r.unsteered_floor_share * 100:.2f} % (listener's half "
                  "on the checker's CPU)")  # fmt: skip
        print(f"NET_RX softirqs/s   {rx} (whole machine)")
        if r.path == "reflector":
            verdict = "met" if r.node_share < TARGET_SHARE else "MISSED"
            print(f"target              {TARGET_SHARE * 100:.0f} % (node pays): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
