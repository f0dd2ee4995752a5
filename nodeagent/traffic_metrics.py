"""Traffic metrics of a load-balancer node, read from the XDP program's pinned counters.

A prometheus_client collector: a scrape reads the pinned maps in the HTTP server's own
thread (never on the agent's event loop), at most once per `min_interval` (scrapes closer
together share the last read), so scraping costs the data plane nothing and the agent a
bounded amount. The series are bounded by the map sizes (docs/METRICS.md): one per service
(at most --max-services), one per backend only with --metrics-per-backend (at most
--max-backends), and fixed sets of drop, pass and conntrack reasons.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from weir.common import protocols
from weir.common.logs import get_logger
from weir.nodeagent.dataplane import layout
from weir.nodeagent.dataplane.model import DataplaneError
from weir.nodeagent.dataplane.pinned import PinnedMaps, ServiceRecord

log = get_logger("weir.agent.metrics")

SERVICE_LABELS = ("namespace", "name", "vip", "port", "protocol")
BACKEND_LABELS = (*SERVICE_LABELS, "backend", "backend_node")
_COUNTS = (
    ("packets", "Packets forwarded"),
    ("bytes", "Bytes forwarded (the frames as they arrived)"),
    ("new_flows", "New flows: conntrack entries made"),
)


class TrafficCollector(Collector):
    """names() maps a service id ("<vip>:<port>/<proto>") to "<namespace>/<name>" (the
    controller's view); a service it does not know yet has empty namespace and name."""

    def __init__(
        self,
        bpffs: Path,
        names: Callable[[], Mapping[str, str]],
        *,
        per_backend: bool = False,
        min_interval: float = 1.0,
    ) -> None:
        self._bpffs = Path(bpffs)
        self._names = names
        self._per_backend = per_backend
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._last: list[Metric] = []
        self._read_at = -float("inf")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self._min_interval:
                self._last = self._read()
                self._read_at = now
            return iter(list(self._last))

    def _read(self) -> list[Metric]:
        if not (self._bpffs / layout.PROG_PIN).exists():
            return []  # not a load-balancer node (yet)
        started = time.monotonic()
        try:
            maps = PinnedMaps(self._bpffs)
        except DataplaneError as exc:
            log.debug("traffic counters unreadable", error=str(exc))
            return []
        try:
            out = list(self._families(maps))
        finally:
            maps.close()
        seconds = GaugeMetricFamily(
            "weir_agent_traffic_read_seconds", "Time the last read of the BPF counters took"
        )
        seconds.add_metric([], time.monotonic() - started)
        return [*out, seconds]

    def _families(self, maps: PinnedMaps) -> Iterable[Metric]:
        services = maps.services()
        names = self._names()
        labels = {rec.index: _service_labels(rec, names) for rec in services}
        svc = maps.percpu_table("svc_stats")
        yield from _counter_families(
            "weir_service",
            "per service",
            SERVICE_LABELS,
            [(labels[r.index], svc[r.index]) for r in services],
        )
        table = GaugeMetricFamily(
            "weir_service_table_info",
            "The table a service's packets use now: active half and content tag (equal tags "
            "on two nodes: the same table)",
            labels=(*SERVICE_LABELS, "half", "tag"),
        )
        for rec in services:
            fields = layout.word_fields(rec.word)
            tag = bytes(rec.meta.half[fields.half].tag).hex()[:16]
            table.add_metric([*labels[rec.index], str(fields.half), tag], 1)
        yield table
        if self._per_backend:
            yield from self._backends(maps, services, labels)
        yield from _reason_families(
            maps,
            "drop_stats",
            "weir_dropped",
            "Dropped by the fast path, by reason",
            layout.DROP_REASONS,
        )
        yield from _reason_families(
            maps,
            "pass_stats",
            "weir_passed",
            "Frames for a VIP left to the kernel untouched (not addressed to this node), by reason",
            layout.PASS_REASONS,
        )
        ct_events = CounterMetricFamily(
            "weir_conntrack_events",
            "Conntrack events: evict (an entry replaced), guarded (new flow untracked: insert "
            "rate limit), untracked (RST/FIN/ICMP, by design), full (every way in use)",
            labels=("event",),
        )
        events = maps.percpu_table("ct_stats")
        for i, event in enumerate(layout.CT_EVENTS):
            ct_events.add_metric([event], int(events[i, 0]))
        yield ct_events

    def _backends(
        self, maps: PinnedMaps, services: list[ServiceRecord], labels: Mapping[int, list[str]]
    ) -> Iterable[Metric]:
        active = {r.index: (r.key, layout.word_fields(r.word).half) for r in services}
        stats = maps.percpu_table("be_stats")
        rows = []
        for b in maps.backends():
            key, half = active.get(b.entry.svc, (b"", 0))
            if b.entry.handle and bytes(b.entry.svc_key) == key and b.meta.halves >> half & 1:
                rows.append(
                    ([*labels[b.entry.svc], f"{b.address}:{b.port}", b.node], stats[b.index])
                )
        yield from _counter_families("weir_backend", "per backend", BACKEND_LABELS, rows)


def _service_labels(rec: ServiceRecord, names: Mapping[str, str]) -> list[str]:
    namespace, _, name = names.get(rec.meta.id.decode(), "").partition("/")
    return [namespace, name, rec.vip, str(rec.port), protocols.name_of(rec.proto)]


def _counter_families(
    prefix: str,
    per: str,
    label_names: tuple[str, ...],
    rows: list[tuple[list[str], numpy.ndarray]],
) -> Iterable[Metric]:
    for column, (what, doc) in enumerate(_COUNTS):
        family = CounterMetricFamily(f"{prefix}_{what}", f"{doc}, {per}", labels=label_names)
        for values, counts in rows:
            family.add_metric(values, int(counts[column]))
        yield family


def _reason_families(
    maps: PinnedMaps, map_name: str, prefix: str, doc: str, reasons: tuple[str, ...]
) -> Iterable[Metric]:
    table = maps.percpu_table(map_name)
    for column, unit in enumerate(("packets", "bytes")):
        family = CounterMetricFamily(f"{prefix}_{unit}", f"{doc} ({unit})", labels=("reason",))
        for i, reason in enumerate(reasons):
            family.add_metric([reason], int(table[i, column]))
        yield family
