"""A plaintext gRPC health port for the kubelet's probes.

The kubelet's gRPC probe cannot speak TLS, and the NodePlane port requires client
certificates, so the probes get a port of their own that serves only grpc.health.v1:
service "liveness" is SERVING while the process runs; service "" (readiness) turns
SERVING once the first snapshot is published, so a replica still listing the cluster
gets no agents through the Service.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from weir.common.logs import get_logger
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.plane.server import bind

log = get_logger("weir.health")

LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING


async def serve_health(listen: str, store: SnapshotStore) -> None:
    """Serve until cancelled."""
    server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = bind(server, listen, None)
    await checker.set(LIVENESS, SERVING)
    await checker.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("health port listening", listen=listen, port=port)
    try:
        await store.wait_published()
        await checker.set("", SERVING)
        await asyncio.Event().wait()
    finally:
        await checker.enter_graceful_shutdown()
        await server.stop(1.0)
