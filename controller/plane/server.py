"""The controller's gRPC server: NodePlane, reflection, grpc.health.v1, and mTLS.

    running = await start_server(plane, "0.0.0.0:9443", tls=ServerTLS(cert, key, client_ca))
    ...
    await running.stop(grace=5)

or `await serve(plane, Listeners(...), tls)` in a TaskGroup: it runs until cancelled and then
stops gracefully (streams are ended so agents reconnect elsewhere, then in-flight
unary calls get `grace` seconds). tls=None serves plaintext: callers only pass None
when the operator asked for it explicitly (--plaintext). tls is ServerTLS (files) or
ManagedTLS (the controller's own CA), controller/plane/tls.py; either is renewed in place.

Besides the NodePlane port (mutual TLS), the same server may listen on
- a bootstrap port: server-authenticated TLS without a client certificate, where agents
  trade their ServiceAccount token for one (IssueNodeCertificate; every other RPC refuses
  callers without a certificate);
- a local Unix socket (mode 0600) for weirctl inside the controller's Pod
  (`kubectl exec ... -- weirctl --controller unix:///run/weir/controller.sock status`):
  whoever can open it can exec into the Pod and read its Secrets anyway, so it is not
  authenticated further.

Health: NOT_SERVING until the first snapshot version exists (an agent must never be
handed an empty state by a controller that has not loaded the cluster yet), then
SERVING, and NOT_SERVING again while shutting down.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from weir.common.logs import get_logger
from weir.common.pb import SERVICE_NAME, pb
from weir.controller.plane.servicer import NodePlane
from weir.controller.plane.tls import ServerTLS, ServingSource, credentials

log = get_logger("weir.server")

__all__ = ["Listeners", "RunningServer", "ServerTLS", "serve", "start_server"]


@dataclass(frozen=True)
class Listeners:
    nodeplane: str  # host:port (port 0 picks a free one)
    bootstrap: str = ""  # host:port of the bootstrap port; "" for none (needs TLS)
    local_socket: Path | None = None


SERVER_OPTIONS = (
    # Find dead agents (and let agents' keepalive pings through).
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    # gRPC sets SO_REUSEPORT by default: a second controller on the same address would then
    # bind without an error and take half of the agents.
    ("grpc.so_reuseport", 0),
)


def bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port (of a server made with SO_REUSEPORT off); the port number.

    Raises OSError when the address cannot be bound, such as when another process has it."""
    try:
        if credentials is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, credentials)
    except RuntimeError as e:  # how grpc says that binding failed
        raise OSError(f"cannot listen on {listen}: the address is in use or not local") from e


def _passthrough(message: bytes) -> bytes:
    return message


# The unary RPCs (method, request type, response type): inspection, open to any certificate
# the client CA signed, and drain, for --operator identities only (controller/plane/servicer.py).
UNARY_METHODS = (
    ("GetSnapshot", pb.GetSnapshotRequest, pb.ClusterSnapshot),
    ("GetNodeSnapshot", pb.GetNodeSnapshotRequest, pb.Snapshot),
    ("ListAgents", pb.ListAgentsRequest, pb.ListAgentsResponse),
    ("ListErrors", pb.ListErrorsRequest, pb.ListErrorsResponse),
    ("ListHealth", pb.ListHealthRequest, pb.ListHealthResponse),
    ("SetNodeDrain", pb.SetNodeDrainRequest, pb.SetNodeDrainResponse),
    ("IssueNodeCertificate", pb.IssueNodeCertificateRequest, pb.IssueNodeCertificateResponse),
    ("GetControllerStatus", pb.GetControllerStatusRequest, pb.ControllerStatus),
)


def node_plane_handler(plane: NodePlane) -> grpc.GenericRpcHandler:
    """The NodePlane methods; Connect writes messages the store already encoded."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(plane, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        for name, request, response in UNARY_METHODS
    }
    handlers["WatchFlows"] = grpc.unary_stream_rpc_method_handler(
        plane.WatchFlows,
        request_deserializer=pb.WatchFlowsRequest.FromString,
        response_serializer=pb.WatchFlowsResponse.SerializeToString,
    )
    handlers["Connect"] = grpc.stream_stream_rpc_method_handler(
        plane.Connect,
        request_deserializer=pb.AgentMessage.FromString,
        response_serializer=_passthrough,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    bootstrap_port: int  # 0: none
    health: health.aio.HealthServicer
    plane: NodePlane
    _ready: asyncio.Task[None]  # turns health SERVING at the first version; ends with stop()

    async def stop(self, grace: float = 5.0) -> None:
        self._ready.cancel()
        try:
            await self.health.enter_graceful_shutdown()
            self.plane.close()
            await self.server.stop(grace)
            log.info("gRPC server stopped")
        finally:
            await asyncio.wait((self._ready,))
            if not self._ready.cancelled():
                self._ready.result()  # raises what it failed with


async def start_server(
    plane: NodePlane, listen: str | Listeners, tls: ServingSource | None
) -> RunningServer:
    """Bind and start; listen is host:port (port 0 picks a free one, see .port) or Listeners."""
    listeners = listen if isinstance(listen, Listeners) else Listeners(listen)
    if listeners.bootstrap and tls is None:
        raise ValueError("the bootstrap port needs TLS")
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((node_plane_handler(plane),))
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = bind(server, listeners.nodeplane, None if tls is None else credentials(tls))
    bootstrap_port = 0
    if listeners.bootstrap and tls is not None:
        bootstrap_port = bind(server, listeners.bootstrap, credentials(tls, mutual=False))
    if listeners.local_socket is not None:
        listeners.local_socket.unlink(missing_ok=True)  # a stale socket of an earlier run
        bind(server, f"unix:{listeners.local_socket}", None)
        os.chmod(listeners.local_socket, 0o600)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await checker.set(name, not_serving)
    await server.start()

    async def ready() -> None:
        await plane.store.wait_published()
        for name in ("", SERVICE_NAME):
            await checker.set(name, health_pb2.HealthCheckResponse.SERVING)

    running = RunningServer(
        server,
        port,
        bootstrap_port,
        checker,
        plane,
        asyncio.create_task(ready(), name="grpc-health-ready"),
    )
    log.info(
        "gRPC server listening",
        listen=listeners.nodeplane,
        port=port,
        tls=tls is not None,
        mutual_tls=tls is not None,
        bootstrap_port=bootstrap_port or None,
        local_socket=str(listeners.local_socket or "") or None,
    )
    return running


async def serve(
    plane: NodePlane,
    listen: str | Listeners,
    tls: ServingSource | None,
    *,
    grace: float = 5.0,
    started: Callable[[RunningServer], None] | None = None,
) -> None:
    """Serve until cancelled, then stop gracefully."""
    running = await start_server(plane, listen, tls)
    if started is not None:
        started(running)
    try:
        # Not server.wait_for_termination(): cancelling it breaks the later stop().
        await asyncio.Event().wait()
    finally:
        await running.stop(grace)
