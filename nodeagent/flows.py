"""The agent's flow log service: reads the data plane's flow log and serves it to `weirctl flows`.

The ring buffer has one reader, this one: it keeps the last `keep` decisions (with the
service's namespace/name from the applied view) and hands new ones to followers. HTTP on a
local address (--flows-address, loopback by default: the records carry client addresses):

    GET /flows[?follow=1][&service=NS/NAME][&backend=ADDR][&limit=N]

answers JSON lines, one decision each: the kept ones (the last `limit`), then, with follow,
each new one as it is read (within ~0.2 s), until the client goes. A follower that cannot
keep up loses decisions, never the agent's memory.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from weir.common.logs import get_logger
from weir.nodeagent.dataplane import layout
from weir.nodeagent.dataplane.flowlog import FlowDecision, FlowLogReader
from weir.nodeagent.dataplane.model import DataplaneError

log = get_logger("weir.agent.flows")

POLL_MS = 200
FOLLOWER_QUEUE = 1024


@dataclasses.dataclass(frozen=True)
class Filter:
    service: str = ""  # "<namespace>/<name>"
    backend: str = ""  # the backend's address

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if self.service and record["service"] != self.service:
            return False
        return not self.backend or record["backend"].rpartition(":")[0] == self.backend


class FlowLog:
    def __init__(
        self, bpffs: Path, names: Callable[[], Mapping[str, str]], *, keep: int = 4096
    ) -> None:
        self._bpffs = Path(bpffs)
        self._names = names
        self._kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._followers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.listening = asyncio.Event()  # set once run() accepts connections

    async def run(self, address: str) -> None:
        """Read the flow log and serve it on host:port, until cancelled."""
        host, _, port = address.rpartition(":")
        server = await asyncio.start_server(self._serve, host.strip("[]") or "127.0.0.1", int(port))
        self.listening.set()
        try:
            async with server:
                await self._read()
        finally:
            server.close()
            for w in self._clients:
                w.close()  # their handlers end at their next write or check

    async def _read(self) -> None:
        reader = None
        try:
            while True:
                if reader is None:
                    reader = await self._open()
                    continue
                poll = asyncio.ensure_future(asyncio.to_thread(reader.poll, POLL_MS))
                try:
                    decisions = await asyncio.shield(poll)
                except asyncio.CancelledError:
                    await poll  # within POLL_MS: the reader must outlive its poll
                    raise
                except DataplaneError as exc:
                    log.warning("flow log unreadable; reopening", error=str(exc))
                    reader.close()
                    reader = None
                    continue
                for d in decisions:
                    self._publish(d)
        finally:
            if reader is not None:
                reader.close()

    async def _open(self) -> FlowLogReader | None:
        """The reader, once the load-balancer role made the data plane; None meanwhile."""
        if (self._bpffs / layout.FLOW_LOG).exists():
            try:
                return await asyncio.to_thread(FlowLogReader, self._bpffs)
            except DataplaneError as exc:
                log.warning("cannot open the flow log", error=str(exc))
        await asyncio.sleep(1.0)
        return None

    def _publish(self, d: FlowDecision) -> None:
        record = {"service": self._names().get(d.service_id, ""), **dataclasses.asdict(d)}
        self._kept.append(record)
        for q in self._followers:
            if q.full():
                q.get_nowait()  # the oldest goes: a slow follower sees the newest
            q.put_nowait(record)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._clients.add(w)
        try:
            async with asyncio.timeout(10):
                request = await r.readuntil(b"\r\n\r\n")
            method, target, *_ = request.decode("latin-1").split(" ", 2)
            url = urllib.parse.urlsplit(target)
            if method != "GET" or url.path != "/flows":
                w.write(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n")
                return
            query = dict(urllib.parse.parse_qsl(url.query))
            match = Filter(query.get("service", ""), query.get("backend", ""))
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Connection: close\r\n\r\n"
            )
            limit = int(query.get("limit", "100"))
            await self._send(r, w, match, limit, query.get("follow") == "1")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass  # not a request we answer
        except ConnectionError:
            pass  # the client went
        finally:
            self._clients.discard(w)
            w.close()

    async def _send(
        self,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        match: Filter,
        limit: int,
        follow: bool,
    ) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(FOLLOWER_QUEUE)
        if follow:
            self._followers.add(queue)
        try:
            kept = [rec for rec in self._kept if match(rec)]
            for rec in kept[-limit:] if limit > 0 else []:
                w.write(json.dumps(rec).encode() + b"\n")
            await w.drain()
            while follow:
                try:
                    rec = await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    if r.at_eof() or w.is_closing():
                        return  # the client went while nothing was logged
                    continue
                if match(rec):
                    w.write(json.dumps(rec).encode() + b"\n")
                    await w.drain()
        finally:
            self._followers.discard(queue)
