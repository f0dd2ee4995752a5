"""The LB node's health checks (docs/HEALTH.md): which backends it checks, and the checker's
fall/rise bookkeeping and reports against real TCP and HTTP listeners on loopback (the path
program is stubbed: these checks go over lo)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from weir.common.aio import Generation
from weir.common.pb import pb
from weir.nodeagent.health.checker import HealthChecker
from weir.nodeagent.health.probe import Connects, Http, probe
from weir.nodeagent.health.targets import Check, Target, targets_of
from weir.nodeagent.service import NodeSettings

from tests.requirements import requires, root

FID = "192.0.2.1:80/TCP"
Address = tuple[str, int]


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


@requires(root)  # SO_MARK
async def test_connects_end_each_check_once_with_its_result_or_its_deadline() -> None:
    """Connects: connected, refused, and late (a listener whose accept queue is full drops
    the SYN), each reported once; a shorter timeout started later still ends first. Twice
    over, the second round on the sockets the first left (each kept for the next check):
    the same results, and every connected check ended with a RST."""
    loop = asyncio.get_running_loop()
    full = _listener()
    full.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue: later SYNs are dropped, never answered
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        fillers.append(f)
    good, closed = _listener(), _listener()
    refused = closed.getsockname()
    closed.close()
    good.settimeout(5)
    connects = Connects(loop)
    try:
        for _ in range(2):
            results = await _round(connects, full.getsockname(), good.getsockname(), refused)
            assert results["good"][0] is None and results["refused"][0] == "refused"
            assert results["late-short"][0] == "timeout"
            assert 0.2 <= results["late-short"][1] < 0.6
            assert results["late-long"][0] == "timeout" and results["late-long"][1] >= 1.0
            conn, _ = good.accept()
            with conn, pytest.raises(ConnectionResetError):
                conn.recv(1)
    finally:
        connects.close()
        for s in (full, good, *fillers):
            s.close()


async def _round(
    connects: Connects, late: Address, good: Address, refused: Address
) -> dict[str, tuple[str | None, float]]:
    """Start the four checks at once; their results and when each came."""
    loop = asyncio.get_running_loop()
    results: dict[str, tuple[str | None, float]] = {}
    finished = Generation()

    def done(name: str) -> Callable[[str | None], None]:
        def record(reason: str | None) -> None:
            assert name not in results
            results[name] = (reason, loop.time() - t0)
            finished.bump()

        return record

    t0 = loop.time()
    connects.start(late, 0, 1.0, done("late-long"))
    connects.start(late, 0, 0.2, done("late-short"))
    connects.start(good, 0, 1.0, done("good"))
    connects.start(refused, 0, 1.0, done("refused"))
    async with asyncio.timeout(5):
        while len(results) < 4:
            await finished.wait_past(finished.value)
    return results
