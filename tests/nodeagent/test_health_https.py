"""HTTPS health checks (docs/HEALTH.md) against real TLS and plain servers on loopback: the
GET over TLS with the expected status, the certificate not verified, SNI and Host from the
check's host; a server that does not speak TLS, or never answers, fails with a clear reason;
the event loop keeps running through a handshake that hangs. Python's TLS server, and
nginx as a backend would run it."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from weir.common.aio import Generation
from weir.common.pb import pb
from weir.nodeagent.health.probe import Http, probe
from weir.nodeagent.health.targets import Check, Target, check_of
from weir.nodeagent.service import NodeSettings

from tests.kube.fakeapi_certs import fake_tls
from tests.requirements import NGINX, requires, root

pytestmark = [requires(root), pytest.mark.timeout(30)]  # root: SO_MARK
FID = "192.0.2.1:443/TCP"


@dataclass
class Server:
    """A loopback server: HTTP over TLS (a certificate from a CA the checks do not know),
    or plain HTTP; it records the server names (SNI) and Host headers it gets."""

    port: int = 0
    names: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    requests: Generation = field(default_factory=Generation)  # bumped by each request


async def _answer(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer one request; anything but a GET gets 400 at once, as a web server answers the
    bytes of a TLS ClientHello sent to its plain port."""
    try:
        request = await reader.read(4096)
        if request.startswith(b"GET ") and b"\r\n\r\n" not in request:
            request += await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        writer.close()
        return
    if not request.startswith(b"GET "):
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    line, *headers = request.decode().split("\r\n")
    server.hosts += [h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("host:")]
    server.requests.bump()
    status = b"200 OK" if line.startswith("GET /ok ") else b"503 Service Unavailable"
    writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[bool], asyncio.Future[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(tls: bool) -> Server:
        record = Server()
        ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*fake_tls().server_files)
            ctx.sni_callback = lambda _s, name, _c: record.names.append(name)
        srv = await asyncio.start_server(
            lambda r, w: _answer(record, r, w), "127.0.0.1", 0, ssl=ctx
        )
        servers.append(srv)
        record.port = srv.sockets[0].getsockname()[1]
        return record

    yield start  # type: ignore[misc]
    for srv in servers:
        srv.close()


async def test_https_get_wants_the_status_with_sni_and_host(serve) -> None:
    server = await serve(True)
    address = ("127.0.0.1", server.port)
    named = Http("/ok", 200, "web.example.com", tls=True)
    assert await probe(address, 0, 2.0, named) is None
    assert (server.names, server.hosts) == (["web.example.com"], ["web.example.com"])
    assert await probe(address, 0, 2.0, Http("/down", 200, tls=True)) == "status 503"
    # No host: no SNI at all, and Host is the address checked.
    assert (server.names[-1], server.hosts[-1]) == (None, "127.0.0.1")
    # The same server asked for a different status: fails like any wrong status.
    assert await probe(address, 0, 2.0, Http("/ok", 204, tls=True)) == "status 200"


async def test_a_server_that_does_not_speak_tls_fails_the_handshake(serve) -> None:
    plain = await serve(False)
    address = ("127.0.0.1", plain.port)
    assert await probe(address, 0, 2.0, Http("/ok", 200)) is None  # it is a good HTTP server
    reason = await probe(address, 0, 2.0, Http("/ok", 200, tls=True))
    assert reason is not None and reason.startswith("tls handshake: "), reason
    assert reason != "tls handshake: timeout"  # it answered, in plain text


async def test_a_silent_server_times_out_in_the_handshake_without_blocking_the_loop() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, reads the ClientHello, never answers
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with srv:
        task = asyncio.create_task(ticker())
        reason = await probe(("127.0.0.1", port), 0, 0.3, Http("/ok", 200, tls=True))
        task.cancel()
    assert reason == "tls handshake: timeout"
    assert ticks >= 15  # the loop ran all along (about 30 ticks in 0.3 s)


async def test_the_checker_runs_https_checks_from_the_snapshot(serve, checker) -> None:
    hc, changes = checker
    good, plain = await serve(True), await serve(False)
    proto = pb.HealthCheck(
        type=pb.HEALTH_CHECK_HTTPS,
        interval_ms=100,
        timeout_ms=100,
        rise=1,
        fall=1,
        http_path="/ok",
        http_status=200,
        host="web.example.com",
    )
    check = check_of(proto)
    assert check == Check("https", 0.1, 0.1, 1, 1, "/ok", 200, "web.example.com")
    targets = {
        Target(FID, "10.0.0.1", 443, "127.0.0.1", good.port): check,
        Target(FID, "10.0.0.2", 443, "127.0.0.1", plain.port): check,
    }
    seen = changes.value
    hc.apply(targets, NodeSettings(load_balancer=True))
    async with asyncio.timeout(5):
        while not hc.report()[1]:
            seen = await changes.wait_past(seen)
        # Two more requests to the TLS server: the check before the last one has ended.
        await good.requests.wait_past(good.requests.value + 1)
    checked, failing = hc.report()
    assert checked == [FID]
    assert [(f.address, f.reason.split(":")[0]) for f in failing] == [("10.0.0.2", "tls handshake")]
    assert set(good.names) == {"web.example.com"} and set(good.hosts) == {"web.example.com"}


NGINX_CONF = """
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{tls} ssl;
        listen 127.0.0.1:{plain};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /ok {{ return 200; }}
        location / {{ return 503; }}
    }}
}}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@requires(NGINX)
async def test_nginx_over_https_and_on_its_plain_port(tmp_path: Path) -> None:
    tls, plain = _port(), _port()
    cert, key = fake_tls().server_files
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=tmp_path, tls=tls, plain=plain, cert=cert, key=key))
    log = tmp_path / "nginx.log"
    with log.open("wb") as out:
        nginx = await asyncio.create_subprocess_exec(
            "nginx", "-c", str(conf), "-e", "stderr", stdout=out, stderr=out
        )
    try:
        async with asyncio.timeout(10):  # until it listens
            while await probe(("127.0.0.1", plain), 0, 1.0) is not None:
                assert nginx.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
        address = ("127.0.0.1", tls)
        assert await probe(address, 0, 2.0, Http("/ok", 200, "web.example.com", tls=True)) is None
        assert await probe(address, 0, 2.0, Http("/down", 200, tls=True)) == "status 503"
        # nginx answers a ClientHello on its plain port with a 400 in plain text.
        reason = await probe(("127.0.0.1", plain), 0, 2.0, Http("/ok", 200, tls=True))
        assert reason is not None and reason.startswith("tls handshake: "), reason
        assert "timeout" not in reason
    finally:
        nginx.terminate()
        async with asyncio.timeout(10):
            await nginx.wait()
