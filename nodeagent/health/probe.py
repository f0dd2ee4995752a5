"""One health check: a TCP connect, or an HTTP/1.0 GET (plain or over TLS), from a
non-blocking socket marked for the check's path. No threads: a bare socket on the event loop
is the cheapest way to run a thousand checks a second from one process (HTTPS takes the
loop's TLS streams, whose handshake runs on memory buffers, never blocking). TCP connects
(Connects) go further: an epoll set of their own, with no task, future, timer or loop handle
per check, since at a thousand checks a second those cost more than the connect itself, and
sockets kept from one check to the next.

A check's result is None when the backend passed, else a short reason ("refused",
"timeout", "status 503", "tls handshake: wrong version number").
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import math
import os
import select
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


class Connects:
    """TCP connect checks in flight, on an epoll set of their own.

    The loop watches only the set's descriptor and is woken once for every batch of connects
    that ended: a check costs no loop handle or selector key, and no SO_ERROR read when it
    connected (only a failure is reported with EPOLLERR or EPOLLHUP). One timer, at the
    earliest deadline of the connects in flight, ends the late ones: none runs while nothing
    is late.

    Sockets are kept for the next check: a check ends with a disconnect (connect to
    AF_UNSPEC: a RST if it connected, as a close with SO_LINGER 0 sends; the socket is then
    as new), and the next one sets its mark, connects and re-arms the socket in the set
    (one-shot: a socket reported once is not reported again, so disconnects wake nobody).
    Four system calls a check where opening and closing a socket took six, and the dearer
    ones (socket, close: a file, a socket, the set's entry made and freed) are gone. A
    socket's first arming, and a disconnect after a timeout (still armed), may be reported
    once more: an event for a socket not in flight is skipped (the kernel reports a
    socket's state as it is when read, never as it was).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[int, tuple[socket.socket, float, Done]] = {}  # by fd
        self._spare: list[socket.socket] = []
        self._epoll = select.epoll()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when it fires
        loop.add_reader(self._epoll.fileno(), self._ready)

    def start(self, address: tuple[str, int], mark: int, timeout: float, done: Done) -> None:
        """Connect; done(result) is called once, from the loop, never from start itself."""
        try:
            sock = self._spare.pop() if self._spare else self._socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        except OSError as e:
            self._loop.call_soon(done, f"socket: {e.strerror or e}")
            return
        err = sock.connect_ex(address)
        if err != errno.EINPROGRESS:
            self._release(sock)
            self._loop.call_soon(done, _reason(err))
            return
        fd = sock.fileno()
        self._epoll.modify(fd, _CONNECT_EVENTS)
        deadline = self._loop.time() + timeout
        self._pending[fd] = (sock, deadline, done)
        if deadline < self._timer_at:
            self._expire_at(deadline)

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            self._epoll.register(sock.fileno(), _CONNECT_EVENTS)
        except OSError:
            sock.close()
            raise
        return sock

    def _release(self, sock: socket.socket) -> None:
        """Disconnect sock (a RST if it connected) and keep it for a later check, unless
        _SPARE are kept already."""
        if disconnect(sock.fileno()) and len(self._spare) < _SPARE:
            self._spare.append(sock)
        else:
            sock.close()

    def _ready(self) -> None:
        for fd, events in self._epoll.poll(0):
            entry = self._pending.pop(fd, None)
            if entry is None:
                continue  # a spare socket: its first arming, or a disconnect after a timeout
            sock, _, done = entry
            err = 0
            if events & _FAILED:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNRESET
            self._release(sock)
            done(_reason(err) if err else None)

    def _expire_at(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        for fd in [fd for fd, (_, deadline, _) in self._pending.items() if deadline <= now]:
            sock, _, done = self._pending.pop(fd)
            self._release(sock)
            done("timeout")
        if self._pending and self._timer is None:
            self._expire_at(min(deadline for _, deadline, _ in self._pending.values()))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._epoll.fileno())
        for sock in [*(sock for sock, _, _ in self._pending.values()), *self._spare]:
            disconnect(sock.fileno())
            sock.close()
        self._pending.clear()
        self._spare.clear()
        self._epoll.close()


_CONNECT_EVENTS = select.EPOLLOUT | select.EPOLLONESHOT
_FAILED = select.EPOLLERR | select.EPOLLHUP
# Spare sockets kept: enough for the checks in flight at once at thousands a second; a
# burst of timeouts opens more, closed again as they end.
_SPARE = 256


class _SockaddrUnspec(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_char * 14)]


_UNSPEC = _SockaddrUnspec(socket.AF_UNSPEC)
# Built once: every TCP check ends with this call.
_UNSPEC_ARGS = (ctypes.byref(_UNSPEC), ctypes.sizeof(_UNSPEC))
_libc = ctypes.CDLL(None, use_errno=True)


def disconnect(fd: int) -> bool:
    """Connect fd to AF_UNSPEC (Python's connect() cannot): TCP aborts the connection, with
    a RST if it was established, and the socket can connect again."""
    return _libc.connect(fd, *_UNSPEC_ARGS) == 0


def _reason(err: int) -> str | None:
    if err == 0:
        return None
    if err == errno.ECONNREFUSED:
        return "refused"
    return os.strerror(err)


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
