"""One health check: a TCP connect, or an HTTP/1.0 GET (plain or over TLS), from a
non-blocking socket marked for the check's path. No threads: a bare socket on the event loop
is the cheapest way to run many checks from one process (HTTPS takes the loop's TLS streams,
whose handshake runs on memory buffers, never blocking). The checker runs its TCP checks in
C instead (health/tcp.py): at a thousand a second, Python per check costs more than the
connect itself.

A check's result is None when the backend passed, else a short reason ("refused",
"timeout", "status 503", "tls handshake: wrong version number").
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# Close with a RST: a check leaves no TIME_WAIT behind, whatever the check rate.
_LINGER_RST = struct.pack("ii", 1, 0)
_MAX_RESPONSE = 1024  # enough for a status line


def _socket(mark: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        sock.close()
        raise
    return sock


Done = Callable[[str | None], None]


@dataclass(frozen=True)
class Http:
    """An HTTP check: GET path must answer status. tls: over TLS (HTTPS), the certificate not
    verified (backends' are often self-signed or cluster-internal: the check asks whether the
    backend answers, not who it is). host: the Host header and the TLS server name (SNI);
    empty: Host is the address checked, and no SNI is sent."""

    path: str = "/"
    status: int = 200
    host: str = ""
    tls: bool = False


async def probe(
    address: tuple[str, int],
    mark: int,
    timeout: float,  # noqa: ASYNC109 (the check's own setting, applied inside)
    http: Http | None = None,
) -> str | None:
    loop = asyncio.get_running_loop()
    try:
        sock = _socket(mark)
    except OSError as e:
        return f"socket: {e.strerror or e}"
    handshake = False
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, address)
            if http is None:
                return None
            host = http.host or address[0]
            if not http.tls:
                return await _http(loop, sock, host, http)
            handshake = True
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=_client_tls(), server_hostname=http.host
            )
            handshake = False
            try:
                return await _https(reader, writer, host, http)
            finally:
                writer.transport.abort()  # a RST, as for the plain checks (SO_LINGER 0)
    except TimeoutError:
        return "tls handshake: timeout" if handshake else "timeout"
    except ssl.SSLError as e:
        return f"{'tls handshake' if handshake else 'tls'}: {_tls_reason(e)}"
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionError, OSError) as e:
        what = e.strerror or type(e).__name__
        return f"tls handshake: {what}" if handshake else what
    finally:
        sock.close()


def _request(host: str, path: str) -> bytes:
    request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: weir-health\r\n\r\n"
    return request.encode("ascii")


async def _http(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, host: str, http: Http
) -> str | None:
    await loop.sock_sendall(sock, _request(host, http.path))
    return await _status(functools.partial(loop.sock_recv, sock), http.status)


async def _https(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, http: Http
) -> str | None:
    writer.write(_request(host, http.path))
    return await _status(reader.read, http.status)


async def _status(recv: Callable[[int], Awaitable[bytes]], expected: int) -> str | None:
    """The check's result from the start of an HTTP response, read with recv (bounded)."""
    data = b""
    while b"\r\n" not in data and len(data) < _MAX_RESPONSE:
        chunk = await recv(_MAX_RESPONSE)
        if not chunk:
            break
        data += chunk
    parts = data.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return "not an HTTP response"
    got = int(parts[1])
    return None if got == expected else f"status {got}"


@functools.cache
def _client_tls() -> ssl.SSLContext:
    """One context for every HTTPS check (made once: loading it is not cheap)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_reason(e: ssl.SSLError) -> str:
    """OpenSSL's reason, readable: "wrong version number", "unexpected eof while reading"."""
    reason = e.reason or (e.strerror or str(e))
    return str(reason).lower().replace("_", " ")
