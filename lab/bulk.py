"""Large transfers through a VIP, checked end to end: run inside hosts as

    python -m weir.lab.bulk serve --port 9090 [--udp-port 53 [--udp-bind VIP]]  # backends
    python -m weir.lab.bulk upload --vip V --port 9000 --bytes 20000000 --seed 1
    python -m weir.lab.bulk download --vip V --port 9000 --bytes 20000000 --seed 1
    python -m weir.lab.bulk datagram --vip V --port 53 --bytes 4000 --seed 1

The content is random.Random(seed).randbytes(bytes) on both sides. datagram sends one UDP
datagram (fragmented when larger than the path MTU) and expects it echoed back whole; it
sends again (up to --tries) when nothing comes back within a second: the first datagram
may only teach the client's kernel the path MTU. upload sends it after a
line "UP <bytes>", and the server answers the SHA-256 of what it received; download asks with
"DOWN <bytes> <seed>" and the server sends it. The client prints one JSON line: a Transfer.
The server prints "serving" once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass

CHUNK = 1 << 16
MAX_BYTES = 1 << 30
TIMEOUT = 60.0


@dataclass(frozen=True)
class Transfer:
    direction: str  # "upload" or "download"
    bytes: int  # moved
    expected: str  # SHA-256 of the content
    got: str  # SHA-256 the other side (upload) or this side (download) computed
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.got == self.expected


def content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        verb, *args = (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode().split()
        size = int(args[0])
        if not 0 <= size <= MAX_BYTES:
            return
        if verb == "UP":
            digest = hashlib.sha256()
            left = size
            while left:
                chunk = await asyncio.wait_for(reader.read(min(CHUNK, left)), TIMEOUT)
                if not chunk:
                    return
                digest.update(chunk)
                left -= len(chunk)
            writer.write(f"{digest.hexdigest()}\n".encode())
        elif verb == "DOWN":
            writer.write(content(size, int(args[1])))
        await writer.drain()
    except (ConnectionError, TimeoutError, ValueError, IndexError, UnicodeDecodeError):
        pass
    finally:
        writer.close()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def serve(port: int, udp_port: int | None, udp_bind: str) -> None:
    server = await asyncio.start_server(_handle, "0.0.0.0", port, reuse_address=True)
    if udp_port is not None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(_Echo, local_addr=(udp_bind, udp_port))
    print(f"serving bulk on {port}", flush=True)
    async with server:
        await server.serve_forever()


def datagram(vip: str, port: int, size: int, seed: int, tries: int) -> Transfer:
    data = content(size, seed)
    expected = hashlib.sha256(data).hexdigest()
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.connect((vip, port))
        for _ in range(tries):
            try:
                s.send(data)
                got = s.recv(size + 1)
            except OSError:
                continue  # lost, or refused while the path MTU was learned
            digest = hashlib.sha256(got).hexdigest()
            return Transfer("datagram", len(got), expected, digest, time.monotonic() - started)
    return Transfer("datagram", 0, expected, "", time.monotonic() - started, "no echo")


def transfer(direction: str, vip: str, port: int, size: int, seed: int) -> Transfer:
    data = content(size, seed)
    expected = hashlib.sha256(data).hexdigest()
    started = time.monotonic()
    moved, got, error = 0, "", ""
    try:
        with socket.create_connection((vip, port), timeout=TIMEOUT) as conn:
            if direction == "upload":
                conn.sendall(f"UP {size}\n".encode() + data)
                moved = size
                got = conn.makefile("rb").readline().decode().strip()
            else:
                conn.sendall(f"DOWN {size} {seed}\n".encode())
                digest = hashlib.sha256()
                while chunk := conn.recv(CHUNK):
                    digest.update(chunk)
                    moved += len(chunk)
                got = digest.hexdigest()
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Transfer(direction, moved, expected, got, time.monotonic() - started, error)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="weir.lab.bulk", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--udp-port", type=int, help="also echo UDP datagrams on this port")
    srv.add_argument(
        "--udp-bind",
        default="0.0.0.0",
        help="the UDP address (a DSR host binds its VIP, so its answers come from it)",
    )
    for name in ("upload", "download", "datagram"):
        c = sub.add_parser(name)
        c.add_argument("--vip", required=True)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--bytes", type=int, default=20_000_000)
        c.add_argument("--seed", type=int, default=1)
        c.add_argument("--tries", type=int, default=3)
    args = p.parse_args(argv)
    if args.mode == "serve":
        asyncio.run(serve(args.port, args.udp_port, args.udp_bind))
        return 0
    if args.mode == "datagram":
        result = datagram(args.vip, args.port, args.bytes, args.seed, args.tries)
    else:
        result = transfer(args.mode, args.vip, args.port, args.bytes, args.seed)
    print(json.dumps(asdict(result)), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
