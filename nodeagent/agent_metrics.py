"""Prometheus metrics of weir-agent (served only with --metrics-address)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from weir.common.pb import pb
from weir.nodeagent.traffic_metrics import TrafficCollector


class PromMetrics:
    """Implements nodeagent.agent.AgentMetrics on its own registry (no process-wide state)."""

    def __init__(self, node: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.version = Gauge(
            "weir_agent_applied_version", "Last version applied and acked", registry=r
        )
        self.apply_seconds = Histogram(
            "weir_agent_apply_seconds",
            "Time to apply one version",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.service_writes = Counter(
            "weir_agent_service_writes_total",
            "Services handed to the data plane, by result",
            ["result"],
            registry=r,
        )
        self.services = Gauge(
            "weir_agent_services", "Services of the view, by state", ["state"], registry=r
        )
        self.map_used = Gauge("weir_agent_map_used", "BPF map entries in use", ["map"], registry=r)
        self.map_capacity = Gauge(
            "weir_agent_map_capacity", "BPF map capacity", ["map"], registry=r
        )
        self.map_reserved = Gauge(
            "weir_agent_map_reserved",
            "BPF map entries kept free for updates (old and new coexist while a service changes)",
            ["map"],
            registry=r,
        )
        self.healthy = Gauge(
            "weir_agent_dataplane_healthy",
            "1 while the role's data plane works (attached, readable), else 0",
            ["role"],
            registry=r,
        )
        self.roles = Gauge(
            "weir_agent_role", "1 while the node has the role, else 0", ["role"], registry=r
        )
        Gauge("weir_agent_info", "Agent identity", ["node"], registry=r).labels(node).set(1)

    def observe_apply(self, version: int, seconds: float, outcome: Mapping[str, int]) -> None:
        self.version.set(version)
        self.apply_seconds.observe(seconds)
        for result, n in outcome.items():
            self.service_writes.labels(result).inc(n)

    def set_services(self, applied: int, failed: int, incomplete: int) -> None:
        self.services.labels("applied").set(applied)
        self.services.labels("failed").set(failed)
        self.services.labels("incomplete").set(incomplete)

    def set_maps(self, usage: Sequence[pb.MapUsage]) -> None:
        for u in usage:
            self.map_used.labels(u.name).set(u.used)
            self.map_capacity.labels(u.name).set(u.capacity)
            self.map_reserved.labels(u.name).set(u.reserved)

    def set_roles(self, active: Mapping[str, bool]) -> None:
        for role, on in active.items():
            self.roles.labels(role).set(int(on))

    def collect_traffic(
        self, bpffs: Path, names: Callable[[], Mapping[str, str]], *, per_backend: bool = False
    ) -> None:
        """Export the data plane's traffic counters (nodeagent.traffic_metrics)."""
        self.registry.register(TrafficCollector(bpffs, names, per_backend=per_backend))

    def set_healthy(self, healthy: Mapping[str, bool]) -> None:
        for role, ok in healthy.items():
            self.healthy.labels(role).set(int(ok))

    def serve(self, address: str) -> None:
        """Serve /metrics on host:port (a daemon thread of prometheus_client)."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
