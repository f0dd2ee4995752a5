"""The controller's Prometheus metrics (one registry per controller, so tests can run many)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.snapshot_version = Gauge(
            "weir_snapshot_version", "Latest snapshot version of this controller", registry=r
        )
        self.versions = Counter("weir_snapshot_versions", "Snapshot versions published", registry=r)
        self.connected_agents = Gauge(
            "weir_connected_agents", "Agents with a live NodePlane stream", registry=r
        )
        self.agent_lag = Gauge(
            "weir_agent_version_lag",
            "Latest version minus the version the agent last acked",
            ["node"],
            registry=r,
        )
        self.refused = Counter(
            "weir_agents_refused",
            "Agent streams and certificate requests refused, by reason (hello, identity, version, "
            "shutdown, capacity, token, request)",
            ["reason"],
            registry=r,
        )
        self.acks = Counter(
            "weir_agent_acks",
            "Acks received, by result (ok, service_errors, error)",
            ["result"],
            registry=r,
        )
        self.ack_seconds = Histogram(
            "weir_agent_ack_seconds",
            "Time from sending a version to an agent until its ack",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.reduce_seconds = Histogram(
            "weir_reduce_duration_seconds",
            "Time to reduce the cluster state and encode the snapshot",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.object_errors = Gauge(
            "weir_object_errors", "Objects currently rejected as bad input", registry=r
        )


async def serve_metrics(metrics: Metrics, listen: str) -> None:
    """Serve /metrics on host:port (from a thread of prometheus_client) until cancelled."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(
        int(port), addr=host.strip("[]") or "0.0.0.0", registry=metrics.registry
    )

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.to_thread(stop)
