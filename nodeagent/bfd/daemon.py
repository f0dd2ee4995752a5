"""The BFD daemon: a small process of its own, started and supervised by the agent
(client.py), so that BFD's timing never waits for the agent's event loop (applying
thousands of services, compiling the BPF program, a slow controller).

    python -m weir.nodeagent.bfd.daemon

It reads commands on stdin and writes session changes on stdout (messages.py), runs every
session of the node in one loop that sleeps until the next packet or timer is due, and
raises its own scheduling priority when it may, so a busy CPU delays it as little as
possible. RFC 5881 single hop: Control packets to UDP port 3784 from one source port in
49152-65535, sent with TTL (hop limit) 255; a packet that arrives with any other TTL did
not come from a neighbour and is dropped (GTSM, RFC 5082).

The agent dying closes stdin: the daemon exits at once without a word to its peers, as a
dead node would. The agent stopping on purpose says "stop" first: the peers get
AdminDown, which RFC 5882 says must not be taken for a failure of the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import random
import selectors
import socket
import sys
import time

from weir.nodeagent.bfd import messages
from weir.nodeagent.bfd.packet import PacketError, State, decode
from weir.nodeagent.bfd.session import Session, Settings

PORT = 3784
SOURCE_PORTS = range(49152, 65536)
TTL = 255
TOS = 0xC0  # network control (CS6), as routers send their own BFD
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # linux/in.h; not every Python names it
NICE = -15  # scheduling priority when allowed (root)
ADMIN_DOWN_COPIES = 3
MAX_BUFFERED = 1 << 20  # event bytes kept while the agent is not reading

_FAMILIES = {
    4: (socket.AF_INET, "0.0.0.0", socket.IPPROTO_IP, socket.IP_TTL),
    6: (socket.AF_INET6, "::", socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
}


def _rx_socket(version: int) -> socket.socket:
    family, anyaddr, level, _ = _FAMILIES[version]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if version == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(level, socket.IPV6_RECVHOPLIMIT, 1)
    else:
        sock.setsockopt(level, IP_RECVTTL, 1)
    sock.bind((anyaddr, PORT))
    sock.setblocking(False)
    return sock


def _tx_socket(version: int) -> socket.socket:
    family, anyaddr, _, _ = _FAMILIES[version]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if version == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS)
    for port in random.sample(SOURCE_PORTS, 64):
        try:
            sock.bind((anyaddr, port))
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    else:
        raise OSError("no free BFD source port")
    sock.setblocking(False)
    return sock


def _received_ttl(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if (level, kind) in (
            (socket.IPPROTO_IP, socket.IP_TTL),
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
        ):
            return int.from_bytes(data[:4], sys.byteorder)
    return None


class Daemon:
    def __init__(self, stdin: int, stdout: int) -> None:
        self._stdin, self._stdout = stdin, stdout
        self._sel = selectors.DefaultSelector()
        self._rx: dict[int, socket.socket] = {}
        self._tx: dict[int, socket.socket] = {}
        self._sessions: dict[str, Session] = {}  # by peer address
        self._by_disc: dict[int, Session] = {}
        self._shown: dict[str, messages.Negotiated] = {}
        self._inbuf = b""
        self._outbuf = b""
        self._running = True
        for fd in (stdin, stdout):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._sel.register(stdin, selectors.EVENT_READ, self._read_commands)

    def open_sockets(self) -> None:
        for version in (4, 6):
            try:
                self._rx[version] = _rx_socket(version)
                self._tx[version] = _tx_socket(version)
            except OSError as exc:
                if version == 4 or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                continue  # a host without IPv6
            self._sel.register(self._rx[version], selectors.EVENT_READ, self._read_packets)

    def run(self) -> None:
        while self._running:
            now = time.monotonic()
            deadline = min((s.deadline() for s in self._sessions.values()), default=now + 1.0)
            for key, _ in self._sel.select(max(0.0, deadline - now)):
                key.data(key.fileobj)
            now = time.monotonic()
            for s in list(self._sessions.values()):
                s.expire(now)
                if s.sending_due(now):
                    self._send(s, now)
                self._report(s)

    # -- commands and events ----------------------------------------------------------------

    def _read_commands(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:  # the agent is gone: vanish as a dead node would
            self._running = False
            return
        self._inbuf += chunk
        while b"\n" in self._inbuf:
            line, self._inbuf = self._inbuf.split(b"\n", 1)
            try:
                wanted = messages.parse_command(line)
            except (ValueError, KeyError, TypeError) as exc:
                print(f"bfd: bad command {line[:200]!r}: {exc}", file=sys.stderr)
                continue
            if wanted is None:
                self._stop()
                return
            self._configure(wanted)

    def _configure(self, wanted: dict[str, Settings]) -> None:
        now = time.monotonic()
        for peer in list(self._sessions):
            if peer not in wanted:
                self._remove(peer, now)
        for peer, settings in wanted.items():
            s = self._sessions.get(peer)
            if s is not None and s.settings != settings:
                self._remove(peer, now)  # new timers: a new session, announced as such
                s = None
            if s is None:
                try:
                    version = ipaddress.ip_address(peer).version
                except ValueError:
                    print(f"bfd: {peer!r} is not an address", file=sys.stderr)
                    continue
                if version not in self._tx:
                    print(f"bfd: no IPv{version} here for {peer}", file=sys.stderr)
                    continue
                disc = self._new_disc()
                s = self._sessions[peer] = Session(peer, settings, disc, now)
                self._by_disc[disc] = s
                self._report(s)

    def _new_disc(self) -> int:
        while True:
            disc = random.randint(1, 2**32 - 1)
            if disc not in self._by_disc:
                return disc

    def _remove(self, peer: str, now: float) -> None:
        s = self._sessions.pop(peer)
        del self._by_disc[s.my_disc]
        self._shown.pop(peer, None)
        s.admin_down(now)
        for _ in range(ADMIN_DOWN_COPIES):
            self._send(s, now)

    def _stop(self) -> None:
        now = time.monotonic()
        for peer in list(self._sessions):
            self._remove(peer, now)
        self._running = False

    def _report(self, s: Session) -> None:
        shown = s.negotiated()
        if self._shown.get(s.peer) == shown:
            return
        self._shown[s.peer] = shown
        self._write(messages.event_line(s.peer, shown))

    def _write(self, data: bytes) -> None:
        if len(self._outbuf) + len(data) > MAX_BUFFERED:
            return  # the agent stopped reading; it learns the state again from later events
        self._outbuf += data
        self._flush(self._stdout)

    def _flush(self, fd: int) -> None:
        try:
            written = os.write(fd, self._outbuf)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            self._running = False
            return
        self._outbuf = self._outbuf[written:]
        registered = fd in self._sel.get_map()
        if self._outbuf and not registered:
            self._sel.register(fd, selectors.EVENT_WRITE, self._flush)
        elif not self._outbuf and registered:
            self._sel.unregister(fd)

    # -- packets --------------------------------------------------------------------------

    def _send(self, s: Session, now: float) -> None:
        version = 6 if ":" in s.peer else 4
        with contextlib.suppress(OSError):  # no route now: the peer's timer will tell
            self._tx[version].sendto(s.packet().encode(), (s.peer, PORT))
        s.sent(now)

    def _read_packets(self, sock: socket.socket) -> None:
        now = time.monotonic()
        while True:
            try:
                data, ancillary, _, addr = sock.recvmsg(512, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if _received_ttl(ancillary) != TTL:
                continue  # not from a neighbour on the link (GTSM)
            try:
                pkt = decode(data)
            except PacketError:
                continue
            source = str(ipaddress.ip_address(addr[0].split("%", 1)[0]))
            if pkt.your_disc:
                s = self._by_disc.get(pkt.your_disc)
            else:
                s = self._sessions.get(source)
                if pkt.state not in (State.DOWN, State.ADMIN_DOWN):
                    s = None
            if s is None or s.peer != source:
                continue
            s.receive(pkt, now)
            if s.final_due:  # answer a Poll at once
                self._send(s, now)


def main() -> int:
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    daemon = Daemon(sys.stdin.fileno(), sys.stdout.fileno())
    try:
        daemon.open_sockets()
    except OSError as exc:
        os.write(sys.stdout.fileno(), messages.error_line(f"BFD sockets: {exc}"))
        return 1
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
