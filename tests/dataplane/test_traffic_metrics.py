"""The agent's traffic metrics, read from the pinned counters of a programmed data plane."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from weir.nodeagent.dataplane import Dataplane
from weir.nodeagent.traffic_metrics import TrafficCollector

from tests.requirements import PROMTOOL, require

from .conftest import Node
from .test_xdp import FE, SEED, VIP, backend_of, flows, maglev, send, targets

NAMES = {FE.id: "shop/web"}
WEB = {"namespace": "shop", "name": "web", "vip": VIP, "port": "80", "protocol": "TCP"}


def scrape(node: Node, per_backend: bool) -> tuple[str, dict[tuple[str, frozenset], float]]:
    registry = CollectorRegistry()
    registry.register(TrafficCollector(node.bpffs, lambda: NAMES, per_backend=per_backend))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def test_traffic_counters_per_service_backend_and_reason(dp: Dataplane, dp_node: Node) -> None:
    dp.set_seed(SEED)
    bes = targets(1, 3)
    dp.apply_service(FE, bes, maglev(bes))
    tracked = flows(6)
    picked = [backend_of(dp, f, bes) for f in tracked]
    for f in tracked[:2]:
        backend_of(dp, f, bes)  # conntrack hits: packets, no new flows
    send(dp, tracked[0], l4_bytes=2)  # a parse drop

    text, samples = scrape(dp_node, per_backend=True)
    assert value(samples, "weir_service_packets_total", **WEB) == 8
    assert value(samples, "weir_service_new_flows_total", **WEB) == 6
    assert value(samples, "weir_service_bytes_total", **WEB) == 8 * 54  # Ethernet+IP+TCP
    for i, be in enumerate(bes):
        labels = {**WEB, "backend": f"{be.address}:{be.port}", "backend_node": ""}
        assert value(samples, "weir_backend_new_flows_total", **labels) == picked.count(i)
    assert value(samples, "weir_dropped_packets_total", reason="parse") == 1
    assert value(samples, "weir_dropped_packets_total", reason="table_empty") == 0
    assert value(samples, "weir_conntrack_events_total", event="evict") == 0
    [(half, tag)] = [
        (dict(k)["half"], dict(k)["tag"]) for n, k in samples if n == "weir_service_table_info"
    ]
    assert half == "0" and len(tag) == 16

    _, without = scrape(dp_node, per_backend=False)
    assert not any(n.startswith("weir_backend_") for n, _ in without)

    require(PROMTOOL)
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_no_counters_without_a_load_balancer_data_plane(node: Node) -> None:
    _, samples = scrape(node, per_backend=True)
    assert samples == {}
