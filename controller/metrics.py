"""The controller's Prometheus metrics (one registry per controller, so tests can run many)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class PoolUsage(Protocol):
    """A pool's usage as IPAM reports it (controller.kube.ipam.PoolUsage)."""

    @property
    def assigned_v4(self) -> int: ...
    @property
    def assigned_v6(self) -> int: ...
    @property
    def available_v4(self) -> int: ...
    @property
    def available_v6(self) -> int: ...


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
        self.flow_watchers = Gauge(
            "weir_flow_watchers", "WatchFlows calls open (weirctl flows --node)", registry=r
        )
        self.flow_watch_dropped = Counter(
            "weir_flow_watch_dropped_decisions",
            "Decisions WatchFlows callers lost because they read too slowly (counted at the end "
            "of each call)",
            registry=r,
        )
        self.reduce_seconds = Histogram(
            "weir_reduce_duration_seconds",
            "Time to reduce the cluster state and encode the snapshot",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.backends_failing = Gauge(
            "weir_health_backends_failing",
            "Backends a majority of their LB nodes see failing their health check",
            registry=r,
        )
        self.frontends_fail_open = Gauge(
            "weir_health_frontends_fail_open",
            "Frontends whose every backend fails its health check (all kept: fail open)",
            registry=r,
        )
        self.health_transitions = Counter(
            "weir_health_transitions",
            "Backends held out (out) or taken back (back) by the health checks",
            ["direction"],
            registry=r,
        )
        self.object_errors = Gauge(
            "weir_object_errors", "Objects currently rejected as bad input", registry=r
        )
        # Per node: at most the NodePlane's max_agents nodes (forget_agent prunes the rest).
        self.agent_connected = Gauge(
            "weir_agent_connected", "1 while the agent's stream is up, else 0", ["node"], registry=r
        )
        self.agent_acked_version = Gauge(
            "weir_agent_acked_version", "Last version the agent acked", ["node"], registry=r
        )
        self.agent_nacks = Counter(
            "weir_agent_nacks",
            "Acks with service errors or a failed version, per node",
            ["node"],
            registry=r,
        )
        self.agent_service_errors = Gauge(
            "weir_agent_service_errors",
            "Services the agent reports not (fully) applied now",
            ["node"],
            registry=r,
        )
        self.bgp_session_up = Gauge(
            "weir_bgp_session_up",
            "1 while the node's BGP session with the peer is established, else 0 (NodeStatus)",
            ["node", "peer"],
            registry=r,
        )
        self.bfd_session_up = Gauge(
            "weir_bfd_session_up",
            "1 while the node's BFD session with the peer is up, else 0; no series for a "
            "peer without BFD (NodeStatus)",
            ["node", "peer"],
            registry=r,
        )
        self._peers: dict[str, frozenset[str]] = {}
        self._bfd_peers: dict[str, frozenset[str]] = {}
        self.leader = Gauge(
            "weir_controller_leader",
            "1 while this replica leads (allocates addresses, writes status), else 0",
            registry=r,
        )
        self.pool_assigned = Gauge(
            "weir_ipam_pool_assigned_addresses",
            "Addresses of the pool held by Services (leader only)",
            ["pool", "family"],
            registry=r,
        )
        self.pool_available = Gauge(
            "weir_ipam_pool_available_addresses",
            "Addresses of the pool still free (leader only)",
            ["pool", "family"],
            registry=r,
        )
        self._pools: frozenset[str] = frozenset()

    def set_bgp_sessions(
        self, node: str, established: Mapping[str, bool], bfd_up: Mapping[str, bool] = {}
    ) -> None:
        """The node's sessions by peer name, as its last NodeStatus says: BGP established,
        and BFD up for the peers that run BFD."""
        for peer in self._peers.get(node, frozenset()) - established.keys():
            self.bgp_session_up.remove(node, peer)
        for peer, up in established.items():
            self.bgp_session_up.labels(node, peer).set(int(up))
        self._peers[node] = frozenset(established)
        for peer in self._bfd_peers.get(node, frozenset()) - bfd_up.keys():
            self.bfd_session_up.remove(node, peer)
        for peer, up in bfd_up.items():
            self.bfd_session_up.labels(node, peer).set(int(up))
        self._bfd_peers[node] = frozenset(bfd_up)

    def forget_agent(self, node: str) -> None:
        """Every series of a node the controller no longer tracks."""
        for metric in (
            self.agent_lag,
            self.agent_connected,
            self.agent_acked_version,
            self.agent_nacks,
            self.agent_service_errors,
        ):
            try:
                metric.remove(node)
            except KeyError:
                pass  # never set for this node
        self.set_bgp_sessions(node, {})
        del self._peers[node], self._bfd_peers[node]

    def set_pools(self, usage: Mapping[str, PoolUsage]) -> None:
        for pool in self._pools - usage.keys():
            for family in ("IPv4", "IPv6"):
                self.pool_assigned.remove(pool, family)
                self.pool_available.remove(pool, family)
        for pool, u in usage.items():
            self.pool_assigned.labels(pool, "IPv4").set(u.assigned_v4)
            self.pool_assigned.labels(pool, "IPv6").set(u.assigned_v6)
            self.pool_available.labels(pool, "IPv4").set(u.available_v4)
            self.pool_available.labels(pool, "IPv6").set(u.available_v6)
        self._pools = frozenset(usage)


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
