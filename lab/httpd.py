"""A tiny HTTP/1.1 server for the lab's backends: every request is answered with its name.

    python -m lab.httpd --name b1 --port 80

Keep-alive is honoured (the lab's long-lived connections send a request every so often on
one connection); "Connection: close" closes after the answer. Prints "serving" once it
listens, so the lab knows it is up without polling.
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
    close = line.rstrip().endswith(b"HTTP/1.0")
    for _ in range(MAX_HEADER_LINES):
        header = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
        if header in (b"\r\n", b"\n", b""):
            break
        key, _, value = header.decode("latin-1").partition(":")
        if key.strip().lower() == "connection":
            close = value.strip().lower() == "close"
    return True, close


async def serve(name: str, port: int) -> None:
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                got, close = await read_request(reader)
                if not got:
                    break
                writer.write(response(name, close))
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
    p = argparse.ArgumentParser(prog="lab.httpd", description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=80)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.name, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
