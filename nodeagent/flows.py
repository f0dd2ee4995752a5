"""The agent's flow log service: reads the data plane's flow log and serves it to `weirctl flows`.

The ring buffer has one reader, this one: it keeps the last `keep` decisions (with the
service's namespace/name from the applied view) and hands new ones to followers. It follows
the data plane: when the pinned ring is replaced (the maps made anew: a migration, or pins
removed and the data plane opened again), it reads the new one.

The controller relays decisions to `weirctl flows --node` (FlowRelay, over the agent's
stream, while someone watches). On the node, HTTP on a local address (--flows-address,
loopback by default: the records carry client addresses):

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
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.nodeagent.dataplane import layout
from weir.nodeagent.dataplane.flowlog import FlowDecision, FlowLogReader
from weir.nodeagent.dataplane.model import DataplaneError

log = get_logger("weir.agent.flows")

POLL_MS = 200
FOLLOWER_QUEUE = 1024
RELAY_BATCH_SECONDS = 0.1  # decisions for the controller go in batches this often at most
RELAY_MAX_PER_SECOND = 1000  # whatever the controller asks
BACKLOG_MAX = 1000


@dataclasses.dataclass(frozen=True)
class Filter:
    service: str = ""  # "<namespace>/<name>"
    backend: str = ""  # the backend's address

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if self.service and record["service"] != self.service:
            return False
        return not self.backend or record["backend"].rpartition(":")[0] == self.backend


class Follower:
    """New decisions for one reader; when it lags, the oldest go (counted in lost)."""

    def __init__(self, size: int = FOLLOWER_QUEUE) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)
        self.arrived = asyncio.Event()  # set by put, cleared by take
        self.lost = 0

    def put(self, record: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the oldest goes: a slow follower sees the newest
            self.lost += 1
        self.queue.put_nowait(record)
        self.arrived.set()

    def take(self) -> list[dict[str, Any]]:
        self.arrived.clear()
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


class FlowLog:
    def __init__(
        self,
        bpffs: Path,
        names: Callable[[], Mapping[str, str]],
        *,
        keep: int = 4096,
        sample: int = 0,
    ) -> None:
        self._bpffs = Path(bpffs)
        self._names = names
        self.sample = sample  # the data plane logs 1 in `sample` decisions (0: off)
        self._kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._followers: set[Follower] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.listening = asyncio.Event()  # set once run() accepts connections
        self.reopened = 0  # readers opened on a new ring after the first

    async def run(self, address: str = "") -> None:
        """Read the flow log (when sampling is on, or served), and serve it on host:port
        when address is set, until cancelled."""
        if not address:
            if self.sample:
                await self._read()
            else:
                await asyncio.Event().wait()  # nothing is logged: nothing to read
            return
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

    def kept(self, match: Filter, limit: int) -> list[dict[str, Any]]:
        """The last `limit` kept decisions that match."""
        records = [rec for rec in self._kept if match(rec)]
        return records[-limit:] if limit > 0 else []

    def follow(self) -> Follower:
        follower = Follower()
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)

    async def _read(self) -> None:
        reader = None
        opened = 0
        try:
            while True:
                if reader is None:
                    reader = await self._open()
                    if reader is not None:
                        self.reopened += opened > 0
                        opened += 1
                    continue
                poll = asyncio.ensure_future(asyncio.to_thread(_poll, reader))
                try:
                    decisions, current = await asyncio.shield(poll)
                except asyncio.CancelledError:
                    await poll  # within POLL_MS: the reader must outlive its poll
                    raise
                except DataplaneError as exc:
                    log.warning("flow log unreadable; reopening", error=str(exc))
                    current = False
                    decisions = []
                for d in decisions:
                    self._publish(d)
                if not current:
                    log.info("the flow log was made anew: reading the new one")
                    reader.close()
                    reader = None
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
        for f in self._followers:
            f.put(record)

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
        follower = self.follow() if follow else None
        try:
            for rec in self.kept(match, limit):
                w.write(json.dumps(rec).encode() + b"\n")
            await w.drain()
            while follower is not None:
                try:
                    rec = await asyncio.wait_for(follower.queue.get(), 1.0)
                except TimeoutError:
                    if r.at_eof() or w.is_closing():
                        return  # the client went while nothing was logged
                    continue
                if match(rec):
                    w.write(json.dumps(rec).encode() + b"\n")
                    await w.drain()
        finally:
            if follower is not None:
                self.unfollow(follower)


def _poll(reader: FlowLogReader) -> tuple[list[FlowDecision], bool]:
    """New decisions, and whether the reader still reads the pinned ring (in a thread)."""
    return reader.poll(POLL_MS), reader.current()


def to_pb(record: Mapping[str, Any]) -> pb.FlowDecision:
    return pb.FlowDecision(**record)


class FlowRelay:
    """The flow log for the controller, while it watches (ControllerClient: FlowWatch in,
    FlowBatch out). Each FlowWatch asks for a backlog batch; live decisions go in batches
    at most every RELAY_BATCH_SECONDS, at most max_per_second of them (the others are
    counted in `unsent`, as are those a busy stream made the follower lose)."""

    def __init__(self, flow_log: FlowLog) -> None:
        self._log = flow_log
        self._follower = flow_log.follow()
        self._backlogs: collections.deque[pb.FlowWatch] = collections.deque(maxlen=64)
        self._wake = asyncio.Event()
        self._rate = 100.0
        self._tokens = self._rate
        self._refilled = time.monotonic()
        self._unsent = 0

    def request(self, watch: pb.FlowWatch) -> None:
        self._rate = float(min(max(watch.max_per_second, 1), RELAY_MAX_PER_SECOND))
        self._backlogs.append(watch)
        self._wake.set()

    def close(self) -> None:
        self._log.unfollow(self._follower)

    async def batches(self) -> AsyncIterator[pb.FlowBatch]:
        """Batches to send, until the caller stops iterating."""
        while True:
            if not self._backlogs:
                await self._next()
            # Cut together, with no await between: a backlog holds every decision logged
            # before it, and a decision logged while these are sent goes in the next live
            # batch only (the one its watcher counts from), never in both.
            live = self._live()
            backlogs = [self._backlog(self._backlogs.popleft()) for _ in range(len(self._backlogs))]
            if live.decisions:
                yield live  # before the backlogs: their watchers skip it
            for backlog in backlogs:
                yield backlog

    async def _next(self) -> None:
        """Wait for a backlog request, or for decisions and then a batch's time."""
        arrived = asyncio.ensure_future(self._follower.arrived.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((arrived, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (arrived, wake):
                task.cancel()
            await asyncio.gather(arrived, wake, return_exceptions=True)
        self._wake.clear()
        if self._follower.arrived.is_set() and not self._backlogs:
            await asyncio.sleep(RELAY_BATCH_SECONDS)

    def _live(self) -> pb.FlowBatch:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        records = self._follower.take()
        send = records[: int(self._tokens)]
        self._tokens -= len(send)
        self._unsent += len(records) - len(send) + self._follower.lost
        self._follower.lost = 0
        return pb.FlowBatch(
            decisions=[to_pb(r) for r in send], sample=self._log.sample, unsent=self._unsent
        )

    def _backlog(self, watch: pb.FlowWatch) -> pb.FlowBatch:
        match = Filter(watch.service, watch.backend)
        records = self._log.kept(match, min(watch.backlog, BACKLOG_MAX))
        return pb.FlowBatch(
            decisions=[to_pb(r) for r in records],
            backlog=True,
            backlog_id=watch.id,
            sample=self._log.sample,
            unsent=self._unsent,
        )
