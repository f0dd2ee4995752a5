"""A TCP proxy in front of the fake API server whose connections can be frozen: they stop
forwarding in both directions but stay open, as through a load balancer or a network that
failed without resetting anything. New connections are forwarded as before."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side and the server's."""

    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class FreezingProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self.port = 0
        self._links: list[_Link] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def freeze(self) -> int:
        """Stop forwarding on every connection open now (they stay open); how many."""
        frozen = 0
        for link in self._links:
            live = [p for p in link.pumps if not p.done()]
            frozen += bool(live)
            for pump in live:
                pump.cancel()
        return frozen

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            for pump in link.pumps:
                pump.cancel()
            await asyncio.gather(*link.pumps, return_exceptions=True)
            for writer in link.writers:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        link = _Link((writer, up_writer))
        link.pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        self._links.append(link)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Forward until end of stream, then pass the end on (close() awaits every pump)."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
