"""A tiny HTTP/1.1 server for the lab's backends: every request is answered with its name.

    python -m weir.lab.httpd --name b1 --port 80
    python -m weir.lab.httpd --name b1 --port 80 --lines   # raw TCP: each line read is a request

Keep-alive is honoured (the lab's long-lived connections send a request every so often on
one connection); "Connection: close" closes after the answer. With --lines every line read
is answered with the name and a newline until the client closes (weir.lab.client --proto
lines). Prints "serving" once it listens, so the harness knows it is up without polling.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

MAX_HEADER_LINES = 100
IDLE_TIMEOUT = 600.0


def response(name: str, close: bool) -> bytes:
    body = f"{name}\n".encode()
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Backend: {name}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


async def read_request(reader: asyncio.StreamReader) -> tuple[bool, bool]:
    """(got a request, client asked to close). Bodies are not expected (GET only)."""
    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
    if not line.strip():
        return False, True
    headers = await read_headers(reader, IDLE_TIMEOUT, MAX_HEADER_LINES)
    if "connection" in headers:
        return True, headers["connection"].lower() == "close"
    return True, line.rstrip().endswith(b"HTTP/1.0")


async def read_headers(
    reader: asyncio.StreamReader, line_timeout: float, max_lines: int
) -> dict[str, str]:
    """Header lines up to the empty one (at most max_lines), by lower-case name; the last
    one of a name wins."""
    headers = {}
    for _ in range(max_lines):
        line = await asyncio.wait_for(reader.readline(), line_timeout)
        if line in (b"\r\n", b"\n", b""):
            break
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers


async def read_line_request(reader: asyncio.StreamReader) -> tuple[bool, bool]:
    """Line mode: any line is a request; only the client ends the connection."""
    return bool(await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)), False


def line_response(name: str, close: bool) -> bytes:
    return f"{name}\n".encode()


async def serve(name: str, port: int, *, lines: bool = False) -> None:
    read, answer = (read_line_request, line_response) if lines else (read_request, response)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                got, close = await read(reader)
                if not got:
                    break
                writer.write(answer(name, close))
                await writer.drain()
                if close:
                    break
        except (ConnectionError, TimeoutError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "0.0.0.0", port, reuse_address=True, backlog=1024)
    print(f"serving {name} on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="weir.lab.httpd", description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--lines", action="store_true", help="answer each line read (raw TCP)")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.name, args.port, lines=args.lines))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
