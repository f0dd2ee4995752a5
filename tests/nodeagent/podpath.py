"""Processes for tests/nodeagent/test_pod_path.py, each run inside a network namespace:

    python tests/nodeagent/podpath.py plane --listen 10.80.0.10:9443 --views DIR
    python tests/nodeagent/podpath.py pod --port 8080
    python tests/nodeagent/podpath.py client --vip 192.0.2.10 --port 80 --bytes 300000

plane: a controller that serves each node the fixed view DIR/<node>.pb (a serialized
Snapshot, hash set) and prints one JSON line per Ack it receives. pod: a TCP server that
reads until the client closes its side, then answers "<peer address>:<peer port> <bytes
read>". client: sends that many bytes, closes its side, prints its own address and the
answer as JSON. Every network operation has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

IO_TIMEOUT = 10.0


async def plane(listen: str, views: Path) -> None:
    import grpc
    from weir.common.pb import ACCEPTED_KEY, pb, pb_grpc

    class StaticPlane(pb_grpc.NodePlaneServicer):
        async def Connect(self, requests: object, context: grpc.aio.ServicerContext) -> None:
            first = await context.read()
            node = first.hello.node
            snap = pb.Snapshot.FromString((views / f"{node}.pb").read_bytes())
            await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
            await context.write(pb.ControllerMessage(snapshot=snap))
            while (msg := await context.read()) is not grpc.aio.EOF:
                if msg.HasField("ack"):
                    errors = {e.service_id: e.message for e in msg.ack.service_errors}
                    ack = {"node": node, "version": msg.ack.version, "errors": errors}
                    print(json.dumps({**ack, "error": msg.ack.error}), flush=True)

    server = grpc.aio.server()
    pb_grpc.add_NodePlaneServicer_to_server(StaticPlane(), server)
    server.add_insecure_port(listen)
    await server.start()
    print(json.dumps({"listening": listen}), flush=True)
    await server.wait_for_termination()


async def pod(port: int) -> None:
    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        count = 0
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), IO_TIMEOUT):
                count += len(chunk)
            writer.write(f"{peer[0]}:{peer[1]} {count}\n".encode())
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "0.0.0.0", port, reuse_address=True)
    print(json.dumps({"listening": port}), flush=True)
    async with server:
        await server.serve_forever()


async def client(vip: str, port: int, size: int) -> dict:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, port), IO_TIMEOUT)
    local = writer.get_extra_info("sockname")
    try:
        writer.write(b"x" * size)
        await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
    finally:
        writer.close()
    return {"local": f"{local[0]}:{local[1]}", "answer": answer.decode().strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="podpath")
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("plane")
    c.add_argument("--listen", required=True)
    c.add_argument("--views", type=Path, required=True)
    c = sub.add_parser("pod")
    c.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--vip", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--bytes", type=int, default=0)
    args = p.parse_args(argv)
    if args.mode == "plane":
        asyncio.run(plane(args.listen, args.views))
    elif args.mode == "pod":
        asyncio.run(pod(args.port))
    else:
        print(json.dumps(asyncio.run(client(args.vip, args.port, args.bytes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
