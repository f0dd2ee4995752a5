"""The NodePlane servicer: one stream per agent, plus the inspection RPCs.

Each agent stream has a reader (acks, status) and a sender. The sender keeps at most one
version in flight per agent and, once it is acked, sends whatever is latest then: a slow
agent skips the versions it missed with one delta and never holds up the others, and no
queue grows. A nack with `error` makes the next message a full snapshot. Only an ack of the
version in flight counts: an ack of version 0 or of a version never sent is ignored.

What a slow reader can pin is bounded. Messages are built from the store's parts (the services
part is one bytes object shared by every stream) only once the message fits in the send
budget (`send_budget` bytes of messages being written at once, whatever their number; one
larger message goes alone), nothing is kept once written, and an agent that does not take a
message within `write_timeout` seconds loses its stream (it reconnects).

What agents send is bounded too (controller/plane/records.py): node names must be DNS-1123
subdomains, strings are clipped, lists cut, at most `max_agents` agents are kept (connected
and disconnected: the oldest disconnected go first; a Hello beyond that many connected agents
is refused), and log lines an agent can cause are rate-limited per node.

Under TLS the identity in the client certificate (its DNS SANs, else its CN) must name the
node the Hello asks for, and a stream ends when that certificate expires (the agent has
renewed it by then and comes back with the new one). The agent's release must be one this
controller serves (weir.common.version: one minor version older or newer); a refused agent's
record says why, for weirctl status.

IssueNodeCertificate trades a Pod's ServiceAccount token for a short-lived client certificate
naming the Pod's node (controller/plane/identity.py); it is the one RPC that takes callers
without a client certificate (the bootstrap port, controller/plane/server.py).

WatchFlows relays a node's flow log from its agent, over that agent's stream, while someone
watches (controller/plane/flows.py). Only the replica that holds the node's stream can: on
another one the call ends UNAVAILABLE with the trailing metadata `weir-agent-elsewhere`
(weirctl then tries again on new connections, which a Service spreads over the replicas).

SetNodeDrain hands the setting to the drainer (controller/plane/drain.py) and answers once a
published version carries it (or at once for a node with no BGP settings).

Authorization: the client CA signs node certificates too, so a signed certificate alone
must not let a node drain the others. Under TLS the mutating RPCs (SetNodeDrain), and
WatchFlows (its decisions carry client addresses), need a certificate identity listed in
`operators` (--operator); the inspection RPCs stay open to
any certificate the CA signed (they redact BGP passwords). In plaintext mode (only on an
explicit --plaintext) and on the local socket (--local-socket, inside the controller's Pod)
there is no identity to check, and every RPC is allowed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import grpc
from cryptography import x509
from prometheus_client import Gauge
from weir.common.aio import Generation
from weir.common.logs import RateLimit, clip, get_logger
from weir.common.pb import ACCEPTED_KEY, pb
from weir.common.version import VERSION, agent_refusal, describe_range
from weir.controller.core.parsing import DNS_SUBDOMAIN
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.views import node_bgp
from weir.controller.metrics import Metrics
from weir.controller.plane.authority import not_after
from weir.controller.plane.budget import ByteBudget
from weir.controller.plane.drain import Drainer, DrainError
from weir.controller.plane.flows import FlowWatchers, WatchError, filter_problem
from weir.controller.plane.identity import NodeCertificates, NodeIdentityRefused
from weir.controller.plane.records import (
    ERROR_CHARS,
    SHORT_CHARS,
    agent_errors,
    bounded_errors,
    bounded_status,
)

log = get_logger("weir.plane")

REDACTED = "<redacted>"
# Trailing metadata of a WatchFlows call whose node's agent may be on another replica.
ELSEWHERE_KEY = "weir-agent-elsewhere"


def peer_names(context: grpc.aio.ServicerContext) -> set[str] | None:
    """Names the client certificate proves (DNS SANs, else CN); None without TLS."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    names = auth.get("peer_dns") or auth.get("x509_common_name") or []
    return {n.decode() for n in names}


def certificate_end(context: grpc.aio.ServicerContext) -> float | None:
    """When the client certificate of the call expires (Unix time); None without one."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    return not_after(x509.load_pem_x509_certificate(next(iter(pem)))).timestamp()


def redact(bgp: pb.BGPConfig) -> None:
    """Hide BGP passwords in inspection output (in place)."""
    for peer in bgp.peers:
        if peer.password:
            peer.password = REDACTED


@dataclass
class _Session:
    """One live stream; info is the agent's record shown by ListAgents."""

    info: pb.AgentInfo
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0  # version sent and not yet acked (0: none)
    sent_at: float = 0.0
    need_full: bool = True
    end_reason: str = ""
    stopped: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Messages besides versions (FlowWatch), written before the next version.
    outbox: collections.deque[bytes] = field(default_factory=lambda: collections.deque(maxlen=64))

    def post(self, watch: pb.FlowWatch) -> None:
        self.outbox.append(pb.ControllerMessage(flow_watch=watch).SerializeToString())
        self.wake.set()

    def stop(self, reason: str) -> None:
        """End the stream (from any task; also before its tasks exist)."""
        self.stopped = True
        self.end_reason = reason
        for task in self.tasks:
            task.cancel()


class NodePlane:
    """The servicer; plane/server.py serves it (Connect sends bytes the store encoded)."""

    def __init__(
        self,
        store: SnapshotStore,
        *,
        errors: Callable[[], Sequence[pb.ObjectError]] = tuple,
        metrics: Metrics | None = None,
        hello_timeout: float = 30.0,
        max_agents: int = 1024,
        send_budget: int = 512 * 2**20,
        write_timeout: float = 60.0,
        drainer: Drainer | None = None,
        drain_timeout: float = 10.0,
        operators: Iterable[str] = (),
        certificates: NodeCertificates | None = None,
        status: Callable[[], Awaitable[pb.ControllerStatus]] | None = None,
        version: str = VERSION,
        health: Callable[[], pb.ListHealthResponse] | None = None,
        flows: FlowWatchers | None = None,
    ) -> None:
        self.store = store
        self._errors = errors
        self.metrics = metrics or Metrics()
        self._hello_timeout = hello_timeout
        self._max_agents = max_agents
        self.send_budget = ByteBudget(send_budget)
        self._write_timeout = write_timeout
        self._log_limit = RateLimit()
        self._drainer = drainer
        self._drain_timeout = drain_timeout
        self._operators = frozenset(operators)
        self._certificates = certificates
        self._status = status
        self.version = version
        self._health = health
        self.flows = flows if flows is not None else FlowWatchers()
        self._sessions: dict[str, _Session] = {}
        self._agents: dict[str, pb.AgentInfo] = {}  # by node, connected or not
        self._closing = False
        self._changes = Generation()  # on every agent event and version
        self._lag_gauges: dict[str, Gauge] = {}
        self._ack_waiters: list[tuple[int, set[str], asyncio.Future[None]]] = []
        store.subscribe(self._on_version)

    def close(self) -> None:
        """End every stream (agents reconnect elsewhere) and refuse new ones."""
        self._closing = True
        for session in list(self._sessions.values()):
            session.stop("controller shutting down")

    @property
    def changes(self) -> Generation:
        """Bumps on every agent event (open, close, ack, status) and version."""
        return self._changes

    def connected_statuses(self) -> list[tuple[str, pb.NodeStatus]]:
        """(node, its last NodeStatus) of every connected agent."""
        return [(node, s.info.status) for node, s in self._sessions.items()]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until predicate() holds; re-checked on every agent event (open, ack, ...)."""
        seen = self._changes.value
        while not predicate():
            seen = await self._changes.wait_past(seen)

    async def wait_acked(self, version: int, nodes: Iterable[str]) -> None:
        """Wait until each of these nodes acked version (or a later one)."""
        pending = {n for n in nodes if self._acked(n) < version}
        if not pending:
            return
        future = asyncio.get_running_loop().create_future()
        waiter = (version, pending, future)
        self._ack_waiters.append(waiter)
        try:
            await future
        finally:
            self._ack_waiters.remove(waiter)

    def _acked(self, node: str) -> int:
        info = self._agents.get(node)
        return info.acked_version if info else 0

    def _lag(self, node: str) -> Gauge:
        gauge = self._lag_gauges.get(node)
        if gauge is None:
            gauge = self._lag_gauges[node] = self.metrics.agent_lag.labels(node)
        return gauge

    def _on_version(self, version: int) -> None:
        self.metrics.snapshot_version.set(version)
        for session in self._sessions.values():
            session.wake.set()
        for info in self._agents.values():
            self._lag(info.node).set(version - info.acked_version)
        self._changes.bump()

    # --- the agent stream -------------------------------------------------------------

    async def Connect(self, _requests: object, context: grpc.aio.ServicerContext) -> None:
        hello = await self._accept(context)
        ends = certificate_end(context)
        session = self._open(hello, context.peer())
        try:
            await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
            async with asyncio.TaskGroup() as tg:
                session.tasks = [
                    tg.create_task(self._read(session, context)),
                    tg.create_task(self._send(session, context)),
                ]
                if ends is not None:
                    session.tasks.append(tg.create_task(self._expire(session, ends)))
                if session.stopped:  # replaced or shut down while it was starting
                    session.stop(session.end_reason)
        finally:
            self._close(session)
        if session.end_reason:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(session.end_reason)

    async def _accept(self, context: grpc.aio.ServicerContext) -> pb.Hello:
        """Read and check the Hello; abort the stream when it is not acceptable."""
        try:
            first = await asyncio.wait_for(context.read(), self._hello_timeout)
        except TimeoutError:
            await self._refuse(context, "hello", grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello")
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await self._refuse(
                context, "hello", grpc.StatusCode.INVALID_ARGUMENT, "first message must be a Hello"
            )
        hello = first.hello
        if not hello.node:
            await self._refuse(
                context, "hello", grpc.StatusCode.INVALID_ARGUMENT, "Hello.node is empty"
            )
        problem = DNS_SUBDOMAIN.problem(hello.node)
        if problem is not None:
            await self._refuse(
                context, "hello", grpc.StatusCode.INVALID_ARGUMENT, f"Hello.node: {problem}"
            )
        names = peer_names(context)
        if names is not None and not names:
            await self._refuse(
                context,
                "identity",
                grpc.StatusCode.UNAUTHENTICATED,
                "no client certificate: an agent gets one from IssueNodeCertificate",
            )
        if names is not None and hello.node not in names:
            self._log_agent(
                "agent refused: certificate names another node",
                hello.node,
                certificate=sorted(clip(n, SHORT_CHARS) for n in names)[:8],
                peer=context.peer(),
            )
            await self._refuse(
                context,
                "identity",
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate is for {sorted(names)}, not node {hello.node!r}",
            )
        problem = agent_refusal(hello.agent_version, self.version)
        if problem is not None:
            self._record_refusal(hello, context.peer(), problem)
            self._log_agent("agent refused: version not served", hello.node, error=problem)
            await self._refuse(context, "version", grpc.StatusCode.FAILED_PRECONDITION, problem)
        if self._closing:
            await self._refuse(
                context, "shutdown", grpc.StatusCode.UNAVAILABLE, "controller shutting down"
            )
        if hello.node not in self._sessions and len(self._sessions) >= self._max_agents:
            await self._refuse(
                context,
                "capacity",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"already {len(self._sessions)} agents connected, the most this controller takes",
            )
        return hello

    async def _refuse(
        self, context: grpc.aio.ServicerContext, reason: str, code: grpc.StatusCode, details: str
    ) -> NoReturn:
        self.metrics.refused.labels(reason).inc()
        self._changes.bump()
        await context.abort(code, details)
        raise AssertionError("abort returned")  # abort always raises

    def _open(self, hello: pb.Hello, peer: str) -> _Session:
        node = hello.node
        old = self._sessions.get(node)
        if old is not None:
            old.stop("replaced by a newer stream from the same node")
        info = pb.AgentInfo(
            node=node,
            agent_version=clip(hello.agent_version, SHORT_CHARS),
            peer=peer,
            connected_unix=int(time.time()),
            connected=True,
        )
        session = _Session(info)
        # An agent that already holds a retained version with the right content gets a
        # delta (or nothing, if current); anything else gets a full snapshot.
        version = hello.applied_version
        if version and hello.applied_hash == self.store.node_hash(node, version):
            session.need_full = False
            info.sent_version = info.acked_version = version
        self._sessions[node] = session
        self._remember(info)
        self.metrics.connected_agents.set(len(self._sessions))
        self.metrics.agent_connected.labels(node).set(1)
        self.metrics.agent_nacks.labels(node)  # 0 from the start: rate() sees the first
        self._acked_changed(info)
        session.wake.set()
        self._log_agent(
            "agent connected",
            node,
            level="info",
            peer=peer,
            applied=version,
            delta=not session.need_full,
            agent_version=info.agent_version,
        )
        return session

    def _remember(self, info: pb.AgentInfo) -> None:
        """Keep info as its node's record (the newest last), within max_agents records."""
        self._agents.pop(info.node, None)
        self._agents[info.node] = info
        while len(self._agents) > self._max_agents:
            oldest = next((n for n in self._agents if n not in self._sessions), None)
            if oldest is None:
                break  # all connected: _accept keeps them within max_agents
            del self._agents[oldest]
            self.metrics.forget_agent(oldest)
            self._lag_gauges.pop(oldest, None)

    def _record_refusal(self, hello: pb.Hello, peer: str, reason: str) -> None:
        """The node's record says why its agent was refused (shown by weirctl status)."""
        info = self._agents.get(hello.node) or pb.AgentInfo(node=hello.node)
        if not info.connected:
            info.agent_version = clip(hello.agent_version, SHORT_CHARS)
            info.peer = peer
        info.refused = clip(reason, ERROR_CHARS)
        info.refused_unix = int(time.time())
        self._remember(info)
        self._changes.bump()

    async def _expire(self, session: _Session, ends: float) -> None:
        """End the stream when its client certificate expires."""
        await asyncio.sleep(max(0.0, ends - time.time()))
        session.stop("the client certificate expired: reconnect with a renewed one")

    def _close(self, session: _Session) -> None:
        node = session.info.node
        self.flows.stream_ended(session, session.end_reason)
        session.info.connected = False
        if self._sessions.get(node) is session:
            del self._sessions[node]
        self.metrics.connected_agents.set(len(self._sessions))
        if node not in self._sessions:
            self.metrics.agent_connected.labels(node).set(0)
        self._changes.bump()
        self._log_agent(
            "agent disconnected", node, level="info", reason=session.end_reason or "stream ended"
        )

    async def _read(self, session: _Session, context: grpc.aio.ServicerContext) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                session.stop("")
                return
            kind = msg.WhichOneof("kind")
            if kind == "ack":
                self._on_ack(session, msg.ack)
            elif kind == "status":
                session.info.status.CopyFrom(bounded_status(msg.status))
                self._status_metrics(session.info)
                self._changes.bump()
            elif kind == "flows":
                self.flows.on_batch(session, msg.flows)
            else:
                self._log_agent("unexpected message on agent stream", session.info.node, kind=kind)

    def _on_ack(self, session: _Session, ack: pb.Ack) -> None:
        info = session.info
        if not session.in_flight or ack.version != session.in_flight:
            self._log_agent(
                "ack for a version not in flight; ignored",
                info.node,
                version=ack.version,
                in_flight=session.in_flight,
            )
            return
        session.in_flight = 0
        self.metrics.ack_seconds.observe(time.monotonic() - session.sent_at)
        errors = bounded_errors(ack.service_errors)
        del info.service_errors[:]
        info.service_errors.extend(errors)
        info.error = clip(ack.error, ERROR_CHARS)
        if ack.error or ack.service_errors:
            self.metrics.agent_nacks.labels(info.node).inc()
        self.metrics.agent_service_errors.labels(info.node).set(len(ack.service_errors))
        if ack.error:
            # The agent could not apply the version at all: start it over from scratch.
            session.need_full = True
            self.metrics.acks.labels("error").inc()
            self._log_agent(
                "agent failed a version", info.node, version=ack.version, error=info.error
            )
        else:
            info.acked_version = ack.version
            result = "service_errors" if ack.service_errors else "ok"
            self.metrics.acks.labels(result).inc()
            if ack.service_errors:
                self._log_agent(
                    "agent could not apply some services",
                    info.node,
                    version=ack.version,
                    errors={e.service_id: e.message for e in errors[:8]},
                    count=len(ack.service_errors),
                )
        self._acked_changed(info)
        if session.need_full or info.sent_version != self.store.version:
            session.wake.set()

    def _log_agent(
        self, event: str, node: str, *, level: str = "warning", **fields: object
    ) -> None:
        """A log line an agent's behaviour causes, at most a few per minute per node and event."""
        dropped = self._log_limit((event, node))
        if dropped is None:
            return
        if dropped:
            fields["suppressed"] = dropped
        getattr(log, level)(event, node=node, **fields)

    def _status_metrics(self, info: pb.AgentInfo) -> None:
        status = info.status
        self.metrics.agent_service_errors.labels(info.node).set(len(status.service_errors))
        self.metrics.set_bgp_sessions(
            info.node,
            {s.peer: s.state == "established" for s in status.bgp_sessions},
            {s.peer: s.bfd_state == "up" for s in status.bgp_sessions if s.bfd_state},
        )

    def _acked_changed(self, info: pb.AgentInfo) -> None:
        self._lag(info.node).set(self.store.version - info.acked_version)
        self.metrics.agent_acked_version.labels(info.node).set(info.acked_version)
        for version, pending, future in self._ack_waiters:
            if info.acked_version >= version:
                pending.discard(info.node)
                if not pending and not future.done():
                    future.set_result(None)
        self._changes.bump()

    async def _send(self, session: _Session, context: grpc.aio.ServicerContext) -> None:
        info = session.info
        while True:
            await session.wake.wait()
            session.wake.clear()
            while session.outbox:
                if not await self._write(context, [session.outbox.popleft()]):
                    session.stop(f"the agent did not take a message within {self._write_timeout} s")
                    return
            latest = self.store.version
            if session.in_flight or latest == 0:
                continue
            if not session.need_full and info.sent_version == latest:
                continue
            base = 0 if session.need_full else info.sent_version
            version, parts, full = self.store.message_parts(info.node, base)
            session.in_flight = version
            session.sent_at = time.monotonic()
            session.need_full = False
            info.sent_version = version
            written = await self._write(context, parts)
            del parts  # an older version's parts must not stay alive with an idle stream
            if not written:
                session.stop(
                    f"the agent did not take version {version} within {self._write_timeout} s"
                )
                return
            log.debug("sent", node=info.node, version=version, base=base, full=full)

    async def _write(self, context: grpc.aio.ServicerContext, parts: list[bytes]) -> bool:
        """Write one message once it fits in the send budget; False when the agent did not
        take it in time. The joined message lives only while it is written."""
        async with self.send_budget.hold(sum(map(len, parts))):
            data = b"".join(parts)
            try:
                async with asyncio.timeout(self._write_timeout):
                    await context.write(data)
            except TimeoutError:
                return False
        return True

    # --- inspection ---------------------------------------------------------------------

    async def _require_identity(self, context: grpc.aio.ServicerContext) -> None:
        """Abort with UNAUTHENTICATED a TLS call without a client certificate (the bootstrap
        port takes such calls, for IssueNodeCertificate only)."""
        if peer_names(context) == set():
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate is needed (this port issues node certificates only)",
            )

    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClusterSnapshot:
        await self._require_identity(context)
        cluster = self.store.cluster()
        if cluster is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no snapshot published yet")
        out = pb.ClusterSnapshot()
        out.CopyFrom(cluster)
        for node in out.nodes:
            redact(node.bgp)
        return out

    async def GetNodeSnapshot(
        self, request: pb.GetNodeSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.Snapshot:
        await self._require_identity(context)
        await self._check_node(request.node, context)
        if self.store.version == 0:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no snapshot published yet")
        snap = self.store.node_snapshot(request.node)
        redact(snap.bgp)
        return snap

    async def _check_node(self, node: str, context: grpc.aio.ServicerContext) -> None:
        """Abort with INVALID_ARGUMENT unless node is a node name (a DNS-1123 subdomain)."""
        if not node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node is required")
        problem = DNS_SUBDOMAIN.problem(node)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node: {problem}")

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAgentsResponse:
        await self._require_identity(context)
        return self.list_agents()

    def list_agents(self) -> pb.ListAgentsResponse:
        agents = [self._agents[n] for n in sorted(self._agents)]
        return pb.ListAgentsResponse(
            version=self.store.version, agents=agents, controller_version=self.version
        )

    async def ListErrors(
        self, request: pb.ListErrorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListErrorsResponse:
        await self._require_identity(context)
        errors = sorted(
            [*self._errors(), *agent_errors(self._agents.values())],
            key=lambda e: (e.kind, e.namespace, e.name, e.message),
        )
        return pb.ListErrorsResponse(errors=errors)

    async def GetControllerStatus(
        self, request: pb.GetControllerStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ControllerStatus:
        await self._require_identity(context)
        status = await self._status() if self._status else pb.ControllerStatus(source="file")
        status.version = self.version
        status.agent_versions = describe_range(self.version)
        return status

    async def WatchFlows(
        self, request: pb.WatchFlowsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchFlowsResponse]:
        # Operators only (under TLS): the decisions carry client addresses.
        await self._require_operator(context, "WatchFlows")
        await self._check_node(request.node, context)
        problem = filter_problem(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        session = self._sessions.get(request.node)
        if session is None:
            await self._no_stream(request.node, context)
        try:
            watcher = self.flows.attach(request.node, session, session.post, request)
        except WatchError as e:
            await context.abort(e.code, str(e))
        self.metrics.flow_watchers.set(len(self.flows))
        try:
            async for response in self.flows.responses(watcher):
                yield response
        except WatchError as e:
            await context.abort(e.code, str(e))
        finally:
            self.flows.detach(watcher)
            self.metrics.flow_watchers.set(len(self.flows))
            self.metrics.flow_watch_dropped.inc(watcher.dropped)

    async def _no_stream(self, node: str, context: grpc.aio.ServicerContext) -> NoReturn:
        """Abort a call about a node whose agent has no stream to this replica."""
        cluster = self.store.cluster() or pb.ClusterSnapshot()
        nodes = {v.node for v in cluster.node_views} | {n.node for n in cluster.nodes}
        if node not in nodes and node not in self._agents:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node {node} in the cluster")
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"node {node}'s agent is not connected to this controller replica: it is down, "
            "or its stream is on another replica (each agent keeps one stream, to one replica)",
            trailing_metadata=((ELSEWHERE_KEY, "1"),),
        )
        raise AssertionError("abort returned")

    # --- identity -----------------------------------------------------------------------

    async def IssueNodeCertificate(
        self, request: pb.IssueNodeCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.IssueNodeCertificateResponse:
        if self._certificates is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "this controller issues no node certificates (weir-controller "
                "--agent-token-audience)",
            )
        await self._check_node(request.node, context)
        try:
            response = await self._certificates.issue(request)
        except NodeIdentityRefused as e:
            self.metrics.refused.labels(e.reason).inc()
            self._log_agent(
                "node certificate refused", request.node, error=str(e), peer=context.peer()
            )
            await context.abort(e.code, str(e))
        self._log_agent(
            "node certificate issued",
            request.node,
            level="info",
            not_after=response.not_after_unix,
            peer=context.peer(),
        )
        return response

    async def ListHealth(
        self, request: pb.ListHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListHealthResponse:
        await self._require_identity(context)
        if self._health is None:
            return pb.ListHealthResponse(version=self.store.version)
        return self._health()

    # --- operation ----------------------------------------------------------------------

    async def SetNodeDrain(
        self, request: pb.SetNodeDrainRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetNodeDrainResponse:
        await self._require_operator(context, "SetNodeDrain")
        if self._drainer is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this controller cannot drain")
        await self._check_node(request.node, context)
        try:
            await self._drainer.set(request.node, request.drain)
        except DrainError as e:
            await context.abort(e.code, str(e))
        try:
            async with asyncio.timeout(self._drain_timeout):
                await self.wait_for(lambda: self._drain_published(request.node, request.drain))
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the setting is recorded but no version carries it yet",
            )
        log.info("node drain set", node=request.node, drain=request.drain)
        return pb.SetNodeDrainResponse(version=self.store.version)

    async def _require_operator(self, context: grpc.aio.ServicerContext, method: str) -> None:
        """Abort with PERMISSION_DENIED unless the certificate names an operator (TLS only)."""
        names = peer_names(context)
        if names is None or names & self._operators:
            return
        log.warning(
            "mutating call refused: not an operator",
            method=method,
            certificate=sorted(names),
            peer=context.peer(),
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method}: certificate identity {sorted(names)} is not an operator "
            "(weir-controller --operator)",
        )

    def _drain_published(self, node: str, drain: bool) -> bool:
        cluster = self.store.cluster()
        if cluster is None:
            return False
        bgp = node_bgp(cluster, node)
        return bgp is None or bgp.drain == drain
