"""weir-agent's Prometheus metrics, read back in the exposition format."""

from __future__ import annotations

from prometheus_client import generate_latest
from weir.common.pb import pb
from weir.nodeagent.agent_metrics import PromMetrics


def test_metrics_exposition() -> None:
    m = PromMetrics("lb-1")
    m.observe_apply(7, 0.25, {"written": 2, "unchanged": 1, "failed": 1, "removed": 0})
    m.set_services(applied=3, failed=1, incomplete=1)
    m.set_maps([pb.MapUsage(name="services", used=3, capacity=64)])
    m.set_roles({"load_balancer": True, "backend": False})
    text = generate_latest(m.registry).decode()
    for line in (
        "weir_agent_applied_version 7.0",
        "weir_agent_apply_seconds_count 1.0",
        'weir_agent_service_writes_total{result="written"} 2.0',
        'weir_agent_services{state="failed"} 1.0',
        'weir_agent_map_used{map="services"} 3.0',
        'weir_agent_map_capacity{map="services"} 64.0',
        'weir_agent_info{node="lb-1"} 1.0',
        'weir_agent_role{role="load_balancer"} 1.0',
        'weir_agent_role{role="backend"} 0.0',
    ):
        assert line in text.splitlines(), line
