"""The LB node's health checks (docs/HEALTH.md): which backends it checks, the checker's
fall/rise bookkeeping and reports, and its TCP checks' C schedule (_tcpcheck.TcpChecks, driven
here without an event loop), against real TCP and HTTP listeners on loopback (the path program
is stubbed: these checks go over lo)."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from weir.common.aio import Generation
from weir.common.pb import pb
from weir.nodeagent.health._tcpcheck import TcpChecks
from weir.nodeagent.health.checker import HealthChecker
from weir.nodeagent.health.probe import Http, probe
from weir.nodeagent.health.targets import Check, Target, targets_of
from weir.nodeagent.health.tcp import SLOT, TcpLoop
from weir.nodeagent.service import NodeSettings

from tests.requirements import requires, root

FID = "192.0.2.1:80/TCP"
Address = tuple[str, int]
Seen = list[tuple[float, tuple[int, bool, str]]]  # a change, when it came (from the start)


def svc() -> pb.Service:
    hc = pb.HealthCheck(type=pb.HEALTH_CHECK_TCP, interval_ms=1000, timeout_ms=500, rise=2, fall=3)
    return pb.Service(
        id=FID,
        vip="192.0.2.1",
        port=80,
        protocol=pb.PROTOCOL_TCP,
        health_check=hc,
        backends=[
            pb.Backend(address="10.0.0.1", port=80),
            pb.Backend(
                address="10.244.1.5",
                port=8080,
                forwarding=pb.FORWARDING_ENCAP,
                node_address="10.1.0.1",
            ),
        ],
        unhealthy=[pb.Backend(address="10.0.0.2", port=80)],
    )


def test_targets_are_every_backend_and_held_out_one_pods_only_when_asked() -> None:
    targets = targets_of([svc()])
    assert sorted(t.address for t in targets) == ["10.0.0.1", "10.0.0.2"]
    check = next(iter(targets.values()))
    assert (check.kind, check.interval, check.timeout, check.rise, check.fall) == (
        "tcp", 1.0, 0.5, 2, 3,
    )  # fmt: skip
    pods = svc()
    pods.health_check.check_encapsulated = True
    (encap,) = [t for t in targets_of([pods]) if t.forwarding == "encap"]
    assert (encap.vip, encap.vip_port, encap.node, encap.port) == (
        "192.0.2.1",
        80,
        "10.1.0.1",
        8080,
    )
    udp = svc()
    udp.protocol = pb.PROTOCOL_UDP
    assert targets_of([udp]) == {}
    no_check = svc()
    no_check.ClearField("health_check")
    assert targets_of([no_check]) == {}


def _listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


async def _until_changed(changes: Generation, seen: int) -> int:
    async with asyncio.timeout(5):
        return await changes.wait_past(seen)


@requires(root)  # SO_MARK
async def test_fall_then_rise_reported_with_reason(
    checker: tuple[HealthChecker, Generation],
) -> None:
    hc, changes = checker
    server = _listener()
    port = server.getsockname()[1]
    target = Target(FID, "10.0.0.1", 80, "127.0.0.1", port)
    hc.apply({target: Check("tcp", 0.05, 0.05, rise=2, fall=2)}, NodeSettings(load_balancer=True))
    await asyncio.sleep(0.3)
    assert hc.report() == ([FID], [])
    seen = changes.value
    server.close()  # refused from now on
    seen = await _until_changed(changes, seen)
    checked, failing = hc.report()
    assert checked == [FID]
    assert [(f.address, f.port, f.reason) for f in failing] == [("10.0.0.1", 80, "refused")]
    assert failing[0].since_unix > 0
    server = _listener(port)
    try:
        await _until_changed(changes, seen)
        assert hc.report() == ([FID], [])
    finally:
        server.close()
    hc.apply({}, NodeSettings(load_balancer=False))  # the role is gone: nothing checked
    await asyncio.sleep(0.1)
    assert hc.report() == ([], [])


@requires(root)
async def test_http_checks_want_the_status() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        status = b"200 OK" if b" /ok " in line else b"503 Unavailable"
        writer.write(b"HTTP/1.0 " + status + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await probe(("127.0.0.1", port), 0, 1.0, Http("/ok", 200)) is None
        assert await probe(("127.0.0.1", port), 0, 1.0, Http("/down", 200)) == "status 503"
        # 192.0.2.0/24 is TEST-NET: nothing answers there, or the route refuses at once.
        assert await probe(("192.0.2.254", 9), 0, 0.1, None) in {
            "timeout",
            "Network is unreachable",
        }


@pytest.fixture
def late() -> Iterator[Address]:
    """A listener that never answers: its accept queue is full, so it drops every SYN."""
    full = _listener()
    full.listen(0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        fillers.append(f)
    yield full.getsockname()
    for s in (full, *fillers):
        s.close()


@pytest.fixture
def checks() -> Iterator[TcpChecks]:
    c = TcpChecks()
    yield c
    c.close()


def _drive(checks: TcpChecks, seconds: float, until: Callable[[Seen], bool] = bool) -> Seen:
    """Run checks as the loop does (tick() at the wake time it returns) for up to seconds,
    or until until(changes so far); the changes, timed."""
    seen: Seen = []
    t0 = time.monotonic()
    end = t0 + seconds
    wake, changes = checks.tick(t0)
    while True:
        now = time.monotonic()
        seen += [(now - t0, c) for c in changes]
        if now >= end or (seen and until(seen)):
            return seen
        time.sleep(max(0.0, min(wake, end) - now))  # the loop's timer
        wake, changes = checks.tick(time.monotonic())


def _refused() -> Address:
    closed = _listener()
    address = closed.getsockname()
    closed.close()
    return address


def _add(checks: TcpChecks, address: Address, interval: float, timeout: float, rise: int,
         fall: int, later: float = 0.0) -> int:  # fmt: skip
    return checks.add(*address, 0, interval, timeout, rise, fall, time.monotonic() + later)


@requires(root)  # SO_MARK
def test_tcp_checks_fall_and_rise_with_their_reasons(checks: TcpChecks, late: Address) -> None:
    """Refused, late and connected, each reported only when fall (rise) results in a row say
    so; the good backend never. Connected checks end with a RST; sockets are reused."""
    good = _listener()
    good.settimeout(5)
    refused = _refused()
    h_refused = _add(checks, refused, 0.1, 0.1, rise=2, fall=2)
    h_late = _add(checks, late, 1.0, 0.2, rise=1, fall=1)
    h_good = _add(checks, good.getsockname(), 0.1, 0.1, rise=1, fall=1)
    try:
        seen = _drive(checks, 3, lambda s: len(s) == 2)
        when = {c[0]: (t, c[1:]) for t, c in seen}
        assert when[h_refused][1] == (True, "refused")
        assert when[h_refused][0] >= 0.08  # the second failure, an interval later
        assert when[h_late][1] == (True, "timeout") and 0.2 <= when[h_late][0] < 0.6
        assert h_good not in when
        for _ in range(2):  # every connected check ends with a RST
            conn, _ = good.accept()
            with conn, pytest.raises(ConnectionResetError):
                conn.recv(1)
        back = _listener(refused[1])
        try:
            seen = _drive(checks, 3, lambda s: any(c[0] == h_refused for _, c in s))
            assert [c for _, c in seen if c[0] != h_late] == [(h_refused, False, "refused")]
        finally:
            back.close()
        assert checks.completed >= 10 and 0 < checks.spare <= 3
    finally:
        good.close()


@requires(root)
def test_a_target_removed_mid_check_never_reports(checks: TcpChecks, late: Address) -> None:
    """Its socket is dropped (kept as a spare); its handle's next target, checking on that
    very socket, sees nothing of the check before (the disconnect's event is not its own)."""
    first = _add(checks, late, 1.0, 0.2, rise=1, fall=1)
    checks.tick(time.monotonic() + SLOT)  # its slot (the nearest to its time), or past it
    assert checks.in_flight == 1
    checks.remove(first)
    assert (checks.in_flight, checks.spare) == (0, 1)
    with pytest.raises(KeyError):
        checks.remove(first)
    good = _listener()
    try:
        again = _add(checks, good.getsockname(), 0.05, 0.05, rise=1, fall=1)
        assert again == first
        assert _drive(checks, 0.5) == []
        assert checks.completed >= 5 and checks.spare == 1
    finally:
        good.close()


@requires(root)
def test_many_targets_are_checked_on_time_with_bounded_sockets(checks: TcpChecks) -> None:
    """1,000 targets every 0.2 s over 10 listeners (never accepting: room for every
    connection) for 1 s, spread over the interval: every check done on time, none failing,
    the sockets in flight and spare bounded."""
    listeners = [_listener() for _ in range(10)]
    for s in listeners:
        s.listen(1024)
    try:
        for i in range(1000):
            _add(checks, listeners[i % 10].getsockname(), 0.2, 0.2, 1, 1, later=i / 5000)
        assert _drive(checks, 1.0) == []
        assert 4000 <= checks.completed <= 6000
        assert checks.in_flight <= 1000 and checks.spare <= 256
    finally:
        for s in listeners:
            s.close()
    with pytest.raises(ValueError, match="more than 2 targets"):
        bounded = TcpChecks(max_targets=2)
        try:
            for _ in range(3):
                _add(bounded, ("127.0.0.1", 9), 1, 1, 1, 1)
        finally:
            bounded.close()


@requires(root)
def test_close_releases_every_descriptor(late: Address) -> None:
    """In flight and spare sockets and the epoll set: none left open; a closed object
    refuses every call."""
    before = len(os.listdir("/proc/self/fd"))
    checks = TcpChecks()
    for _ in range(50):
        _add(checks, late, 1.0, 0.5, rise=1, fall=1)
    h = _add(checks, _refused(), 1.0, 0.5, rise=1, fall=1)
    checks.tick(time.monotonic() + SLOT)  # their slot, or past it
    checks.remove(h)
    assert checks.in_flight == 50
    checks.close()
    checks.close()
    assert len(os.listdir("/proc/self/fd")) == before
    for call in (lambda: checks.tick(0.0), lambda: checks.remove(0)):
        with pytest.raises(ValueError, match="closed"):
            call()


SOCKET_FAILS = """
import resource, sys, time
from weir.nodeagent.health._tcpcheck import TcpChecks
checks = TcpChecks()
checks.add("127.0.0.1", 9, 0, 1.0, 1.0, 1, 1, time.monotonic())
resource.setrlimit(resource.RLIMIT_NOFILE, (0, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(checks.tick(time.monotonic() + 0.02)[1])  # its slot, or past it
"""


@requires(root)
def test_a_socket_that_cannot_be_made_is_the_check_failure() -> None:
    """socket() failing (no descriptor left) fails the check with its reason, no exception."""
    out = subprocess.run([sys.executable, "-c", SOCKET_FAILS], capture_output=True, text=True,
                         timeout=30, check=True).stdout  # fmt: skip
    assert out.strip() == "[(0, True, 'socket: Too many open files')]"


def test_reported_results_take_the_same_rise_and_fall(checks: TcpChecks) -> None:
    """HTTP(S) results, reported: failing after fall in a row, a new reason while failing
    told, healthy after rise in a row; never started by tick(); unknown handles refused."""
    h = checks.add_reported(2, 3)
    assert list(checks.report(h, "status 503")) == []
    assert list(checks.report(h, None)) == []  # the streak starts over
    for _ in range(2):
        assert list(checks.report(h, "status 503")) == []
    assert list(checks.report(h, "status 500")) == [(h, True, "status 500")]
    assert list(checks.report(h, "status 500")) == []  # the same reason: nothing new
    assert list(checks.report(h, "timeout")) == [(h, True, "timeout")]
    assert list(checks.report(h, None)) == []
    assert list(checks.report(h, None)) == [(h, False, "timeout")]
    assert checks.tick(time.monotonic()) == (math.inf, ())  # nothing of its own to run
    assert checks.in_flight == 0 and checks.completed == 9
    tcp = checks.add("127.0.0.1", 9, 0, 1.0, 1.0, 1, 1, time.monotonic() + 60)
    with pytest.raises(KeyError):
        checks.report(tcp, None)  # checked here, not reported
    checks.remove(h)
    with pytest.raises(KeyError):
        checks.report(h, None)
    other = checks.add_reported(1, 1)
    with pytest.raises(TypeError):
        checks.report(other, b"503")  # type: ignore[arg-type]


async def test_a_failed_pass_is_logged_and_the_checks_go_on() -> None:
    """tick() raising (out of memory, epoll_wait failing) loses that pass, not the loop's
    timer: the next pass runs a slot later."""
    loop = asyncio.get_running_loop()
    tcp = TcpLoop(loop, lambda *_: None)
    passes: list[float] = []
    second = asyncio.Event()
    real = tcp.checks

    class Failing:
        def tick(self, now: float) -> tuple[float, tuple[()]]:
            passes.append(now)
            if len(passes) == 1:
                raise OSError(errno.EBADF, "epoll_wait")
            second.set()
            return math.inf, ()

    tcp.checks = Failing()  # type: ignore[assignment]
    try:
        tcp._wake_at(loop.time())
        async with asyncio.timeout(2):
            await second.wait()
        assert passes[1] - passes[0] >= SLOT * 0.9
    finally:
        tcp.checks = real
        tcp.close()
