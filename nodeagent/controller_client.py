"""The agent's side of the NodePlane stream.

    client = ControllerClient("ctl:9443", node="lb-1", handler=apply, tls=TLSConfig(...))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(client.run())            # connects, reconnects, until cancelled
        ...
        client.report_status(pb.NodeStatus(...))  # latest wins, sent when connected

tls is the agent's identity (nodeagent/identity.py): certificate files (TLSConfig) or a
certificate traded for the Pod's ServiceAccount token (TokenIdentity), which run() keeps
renewed; when it changes, the stream moves to a new connection with it between two messages
(never while the handler runs), without backoff.

`handler(update) -> pb.Ack` is awaited once per version, in order, never concurrently.
`update.view` is the node's complete view after that version (hash verified);
`update.upserted/removed/bgp_changed/node_config_changed` say what changed since the
previous version (`full=True`: a full snapshot, upserted holds every service and the agent should
reconcile its whole state against the view). The Ack it returns is sent as is (its
version is filled in when 0): `service_errors` for services that could not be applied,
`error` when the whole version failed (the controller then sends a full snapshot).
A handler that raises counts as `error`.

The controller sends the next version only after the previous one was acked, always
the latest: a slow handler gets one delta covering everything it missed.

`flows` (the agent's flow log, nodeagent/flows.py) makes a relay while the controller asks
(FlowWatch): its batches go up the stream until the controller says stop or the stream ends.
"""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from weir.common import viewhash
from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import ACCEPTED_KEY, pb, pb_grpc
from weir.common.version import VERSION
from weir.nodeagent.identity import TLSConfig, TokenIdentity

log = get_logger("weir.controller_client")

AGENT_VERSION = VERSION  # the package release (weir.common.version)


__all__ = ["ControllerClient", "Identity", "NodeView", "TLSConfig", "TokenIdentity", "Update"]


class Identity(Protocol):
    """What the client connects with (nodeagent/identity.py)."""

    @property
    def generation(self) -> Generation:  # bumped when the certificate changes
        ...

    async def run(self) -> None: ...
    async def channel_credentials(self) -> grpc.ChannelCredentials: ...
    def channel_options(self) -> list[tuple[str, str | int]]: ...


class FlowRelay(Protocol):
    """The flow log sent up the stream (nodeagent/flows.py FlowRelay)."""

    def request(self, watch: pb.FlowWatch) -> None: ...
    def close(self) -> None: ...
    def batches(self) -> AsyncIterator[pb.FlowBatch]: ...


@dataclass(frozen=True)
class NodeView:
    """A node's complete view at one version. Immutable: do not modify the messages."""

    node: str
    version: int
    hash: str
    maglev_seed: int
    services: Mapping[str, pb.Service]  # by id
    bgp: pb.BGPConfig
    node_config: pb.NodeConfig
    # Each service's digest (common.viewhash), kept so the next hash covers only changes.
    digests: Mapping[str, bytes] = field(repr=False, compare=False)

    def snapshot(self) -> pb.Snapshot:
        """The view as a pb.Snapshot (a copy, services sorted by id)."""
        snap = pb.Snapshot(
            version=self.version,
            hash=self.hash,
            node=self.node,
            maglev_seed=self.maglev_seed,
            services=[self.services[sid] for sid in sorted(self.services)],
        )
        if self.bgp.ByteSize():
            snap.bgp.CopyFrom(self.bgp)
        if self.node_config.ByteSize():
            snap.node_config.CopyFrom(self.node_config)
        return snap

    @classmethod
    def from_snapshot(cls, snap: pb.Snapshot) -> NodeView:
        services = {s.id: s for s in snap.services}
        return cls._build(
            snap.node, snap.version, snap.maglev_seed, services, snap.bgp, snap.node_config, {}
        )

    @classmethod
    def _build(
        cls,
        node: str,
        version: int,
        seed: int,
        services: dict[str, pb.Service],
        bgp: pb.BGPConfig,
        node_config: pb.NodeConfig,
        reuse: Mapping[str, bytes],
    ) -> NodeView:
        digests = {
            sid: reuse.get(sid) or viewhash.service_digest(viewhash.encode(services[sid]))
            for sid in sorted(services)
        }
        digest = viewhash.finish(
            viewhash.combine(list(digests.values())),
            viewhash.node_trailer(node, seed, bgp, node_config),
        )
        return cls(
            node=node,
            version=version,
            hash=digest,
            maglev_seed=seed,
            services=types.MappingProxyType(services),
            bgp=bgp,
            node_config=node_config,
            digests=types.MappingProxyType(digests),
        )


@dataclass(frozen=True)
class Update:
    """One version for the handler: the full view after it, and what changed."""

    view: NodeView
    base_version: int  # 0 for a full snapshot
    full: bool
    upserted: tuple[pb.Service, ...]  # full: every service
    removed: tuple[str, ...]  # full: ids of the previous view gone now
    bgp_changed: bool  # full: always True
    node_config_changed: bool  # full: always True

    @property
    def version(self) -> int:
        return self.view.version


Handler = Callable[[Update], Awaitable[pb.Ack]]


class ResyncNeeded(Exception):
    """The received message cannot be applied on the view held (asks for a full snapshot)."""


def apply_message(current: NodeView | None, node: str, msg: pb.ControllerMessage) -> Update:
    """Reconstruct the view a Snapshot or Delta describes; raise ResyncNeeded if impossible."""
    kind = msg.WhichOneof("kind")
    if kind == "snapshot":
        snap = msg.snapshot
        if snap.node != node:
            raise ResyncNeeded(f"snapshot is for node {snap.node!r}, not {node!r}")
        view = NodeView.from_snapshot(snap)
        if view.hash != snap.hash:
            raise ResyncNeeded(f"snapshot {snap.version}: hash mismatch")
        previous = current.services if current else {}
        return Update(
            view=view,
            base_version=0,
            full=True,
            upserted=tuple(view.services[sid] for sid in sorted(view.services)),
            removed=tuple(sorted(set(previous) - set(view.services))),
            bgp_changed=True,
            node_config_changed=True,
        )
    if kind == "delta":
        delta = msg.delta
        if current is None or current.version != delta.base_version:
            have = current.version if current else 0
            raise ResyncNeeded(f"delta {delta.base_version}->{delta.version} but have {have}")
        services = dict(current.services)
        digests = dict(current.digests)
        for sid in delta.removed:
            services.pop(sid, None)
            digests.pop(sid, None)
        for svc in delta.upserted:
            services[svc.id] = svc
            digests.pop(svc.id, None)
        bgp = delta.bgp if delta.bgp_changed else current.bgp
        config = delta.node_config if delta.node_config_changed else current.node_config
        view = NodeView._build(
            node, delta.version, delta.maglev_seed, services, bgp, config, digests
        )
        if view.hash != delta.hash:
            raise ResyncNeeded(f"delta {delta.base_version}->{delta.version}: hash mismatch")
        return Update(
            view=view,
            base_version=delta.base_version,
            full=False,
            upserted=tuple(delta.upserted),
            removed=tuple(delta.removed),
            bgp_changed=delta.bgp_changed,
            node_config_changed=delta.node_config_changed,
        )
    raise ResyncNeeded(f"unknown controller message {kind!r}")


class ControllerClient:
    """One agent's connection to the controller (see the module docstring)."""

    def __init__(
        self,
        target: str,
        node: str,
        handler: Handler,
        *,
        tls: Identity | None = None,  # None: plaintext (the caller asked for it explicitly)
        initial: NodeView | None = None,  # a view already applied (Hello carries it)
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        channel_options: tuple[tuple[str, int | str], ...] = (),
        flows: Callable[[], FlowRelay] | None = None,
    ) -> None:
        if not node:
            raise ValueError("node name is required")
        self.target = target
        self.node = node
        self._handler = handler
        self._tls = tls
        self._view = initial
        self._backoff = (backoff_initial, backoff_max)
        self._channel_options = channel_options
        self._status: pb.NodeStatus | None = None
        self._status_changes = Generation()  # bumped by report_status
        self._changes = Generation()  # view, connection state or failure count changed
        self._connected = False
        self._failures = 0
        self._accepted = 0
        self._write_lock = asyncio.Lock()
        self._flows = flows
        self._relay: tuple[FlowRelay, asyncio.Task[None]] | None = None

    @property
    def view(self) -> NodeView | None:
        """The last view the handler accepted (None before the first, or after an error)."""
        return self._view

    @property
    def connected(self) -> bool:
        """True while a stream is up and the controller accepted the Hello."""
        return self._connected

    @property
    def accepted(self) -> int:
        """Streams the controller accepted since the client started."""
        return self._accepted

    @property
    def failures(self) -> int:
        """Stream attempts that failed or were refused since the last accepted one."""
        return self._failures

    def report_status(self, status: pb.NodeStatus) -> None:
        """Send this status now if connected, else after the next Hello (latest wins)."""
        self._status = status
        self._status_changes.bump()

    async def wait_version(self, version: int) -> NodeView:
        """Wait until the handler accepted a view with at least this version."""
        await self.wait_for(lambda: self._view is not None and self._view.version >= version)
        assert self._view is not None
        return self._view

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until predicate() holds; re-checked on every change of view, connection
        state or failure count."""
        seen = self._changes.value
        while not predicate():
            seen = await self._changes.wait_past(seen)

    async def run(self) -> None:
        """Connect and follow the stream until cancelled, reconnecting with backoff; keep
        the identity renewed meanwhile."""
        async with asyncio.TaskGroup() as tg:
            if self._tls is not None:
                tg.create_task(self._tls.run(), name="identity")
            await self._follow()

    def _options(self) -> list[tuple[str, str | int]]:
        initial, maximum = self._backoff
        ms = int(initial * 1000)
        return [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 512 * 1024 * 1024),
            # The channel's own reconnect backoff must not outlast ours.
            ("grpc.initial_reconnect_backoff_ms", ms),
            ("grpc.min_reconnect_backoff_ms", ms),
            ("grpc.max_reconnect_backoff_ms", int(maximum * 1000)),
            *self._channel_options,
        ]

    async def _follow(self) -> None:
        """Channels, each with the identity of the moment, and streams on them."""
        initial, maximum = self._backoff
        attempt = 0
        while True:
            if self._tls is None:
                identity = 0
                channel = grpc.aio.insecure_channel(self.target, options=self._options())
            else:
                credentials = await self._tls.channel_credentials()
                identity = self._tls.generation.value
                options = self._options() + self._tls.channel_options()
                channel = grpc.aio.secure_channel(self.target, credentials, options)
            try:
                stub = pb_grpc.NodePlaneStub(channel)
                while True:
                    renewed = False
                    try:
                        renewed = await self._session(stub, identity)
                    except grpc.aio.AioRpcError as exc:
                        log.warning(
                            "controller stream failed",
                            target=self.target,
                            code=exc.code().name,
                            details=exc.details(),
                        )
                    except Exception:
                        log.exception("controller stream error", target=self.target)
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is None or task.cancelling():
                            raise
                        # grpc.aio raises it from a call cancelled within this agent: a
                        # lost stream, not this client's end.
                        log.error("controller stream cancelled by the agent", target=self.target)
                    if renewed:  # a new certificate: a new connection with it, at once
                        self._connected = False
                        self._changes.bump()
                        break
                    if self._connected:  # the stream had been accepted: start backing off anew
                        self._connected = False
                        attempt = 0
                    else:
                        self._failures += 1
                    self._changes.bump()
                    # Full jitter: agents that lost the same controller do not return in step.
                    delay = random.uniform(0, min(maximum, initial * 2**attempt))
                    attempt = min(attempt + 1, 30)
                    await asyncio.sleep(delay)
            finally:
                self._connected = False
                await channel.close(grace=None)

    async def _session(self, stub: pb_grpc.NodePlaneStub, identity: int) -> bool:
        """One stream: Hello, then apply messages until it ends (False) or the identity
        changed past `identity` (True)."""
        call = stub.Connect()
        writer: asyncio.Task[None] | None = None
        renewal: asyncio.Task[int] | None = None
        try:
            view = self._view
            hello = pb.Hello(
                node=self.node,
                agent_version=AGENT_VERSION,
                applied_version=view.version if view else 0,
                applied_hash=view.hash if view else "",
            )
            await call.write(pb.AgentMessage(hello=hello))
            metadata = await call.initial_metadata()
            if not any(key == ACCEPTED_KEY for key, _ in metadata or ()):
                # Refused: reading raises the status (PERMISSION_DENIED, INVALID_ARGUMENT).
                await call.read()
                await call.code()
                return False
            self._connected = True
            self._failures = 0
            self._accepted += 1
            self._changes.bump()
            log.info("connected to controller", target=self.target, applied=hello.applied_version)
            writer = asyncio.create_task(self._write_status(call), name="status-writer")
            if self._tls is not None:
                renewal = asyncio.create_task(
                    self._tls.generation.wait_past(identity), name="identity-renewal"
                )
            while True:
                msg = await self._next(call, renewal)
                if msg is None:
                    log.info("node certificate renewed: moving the stream to a new connection")
                    return True
                if not isinstance(msg, pb.ControllerMessage):  # grpc.aio.EOF
                    code = await call.code()
                    log.info("controller ended the stream", code=code.name)
                    return False
                await self._on_message(call, msg)
        finally:
            call.cancel()
            await self._stop_relay()
            for task in (writer, renewal):
                if task is None:
                    continue
                task.cancel()
                # Awaited, not just cancelled: it ends before the next session's starts.
                (ended,) = await asyncio.gather(task, return_exceptions=True)
                if isinstance(ended, Exception):
                    log.error(f"{task.get_name()} failed", error=repr(ended), exc_info=ended)

    @staticmethod
    async def _next(
        call: grpc.aio.StreamStreamCall, renewal: asyncio.Task[int] | None
    ) -> pb.ControllerMessage | object | None:
        """The next message (or EOF); None once renewal is done first."""
        if renewal is None:
            return await call.read()
        read = asyncio.ensure_future(call.read())
        try:
            await asyncio.wait((read, renewal), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not read.done():
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)
        return read.result() if not read.cancelled() else None

    async def _on_message(self, call: grpc.aio.StreamStreamCall, msg: pb.ControllerMessage) -> None:
        if msg.HasField("flow_watch"):
            await self._on_flow_watch(call, msg.flow_watch)
            return
        version = msg.snapshot.version if msg.HasField("snapshot") else msg.delta.version
        try:
            update = apply_message(self._view, self.node, msg)
        except ResyncNeeded as exc:
            log.warning("cannot apply controller message, asking for a snapshot", error=str(exc))
            self._view = None
            await self._send(call, pb.AgentMessage(ack=pb.Ack(version=version, error=str(exc))))
            return
        try:
            ack = await self._handler(update)
        except Exception as exc:
            log.exception("handler failed", version=version)
            ack = pb.Ack(error=f"handler failed: {exc}")
        if not ack.version:
            ack.version = version
        # After a whole-version failure the agent's state is unknown: resync from scratch.
        self._view = None if ack.error else update.view
        self._changes.bump()
        await self._send(call, pb.AgentMessage(ack=ack))

    async def _on_flow_watch(self, call: grpc.aio.StreamStreamCall, watch: pb.FlowWatch) -> None:
        if not watch.watch or self._flows is None:
            await self._stop_relay()
            if self._flows is None and watch.watch:  # say so rather than leave it waiting
                await self._send(
                    call, pb.AgentMessage(flows=pb.FlowBatch(backlog=True, backlog_id=watch.id))
                )
            return
        if self._relay is None:
            relay = self._flows()
            task = asyncio.create_task(self._send_flows(call, relay), name="flow-relay")
            self._relay = (relay, task)
        self._relay[0].request(watch)

    async def _send_flows(self, call: grpc.aio.StreamStreamCall, relay: FlowRelay) -> None:
        try:
            async for batch in relay.batches():
                await self._send(call, pb.AgentMessage(flows=batch))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream ended; the reader reports why
        finally:
            relay.close()

    async def _stop_relay(self) -> None:
        if self._relay is not None:
            relay, task = self._relay
            self._relay = None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            relay.close()  # also when its task was cancelled before its first step

    async def _write_status(self, call: grpc.aio.StreamStreamCall) -> None:
        """The latest status at the start of the stream, then each new one (latest wins)."""
        sent = -1
        try:
            while True:
                sent = await self._status_changes.wait_past(sent)
                if self._status is not None:
                    await self._send(call, pb.AgentMessage(status=self._status))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream ended; the reader reports why and the next session resends

    async def _send(self, call: grpc.aio.StreamStreamCall, msg: pb.AgentMessage) -> None:
        """Write msg; a writer cancelled meanwhile (the relay, when the last watcher goes)
        ends once the write is done: grpc.aio cancels the whole stream with a cancelled
        write, and the agent would lose its controller for it."""
        async with self._write_lock:
            write = asyncio.ensure_future(call.write(msg))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await asyncio.wait((write,))  # which, unlike gather, cancels nothing
                raise
