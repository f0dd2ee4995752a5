"""The lab's traffic over its story, from the metrics the agents export: a thread scrapes
each LB node's agent (`/metrics`, in the node's namespace) every `interval` seconds and keeps
the new-flow counters per LB node (each of its services' series) and per backend (its series
on every node), for lab/chart.py to count their increase.

A node that does not answer (failed), or answers only part (killed meanwhile), keeps its
last values: its counters stand still.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families
from weir.lab.chart import Sample
from weir.lab.netns import Host

NODE_METRIC = "weir_service_new_flows_total"
BACKEND_METRIC = "weir_backend_new_flows_total"


Series = dict[str, float]  # series (its labels) -> value


def parse(text: str, backend_names: Mapping[str, str]) -> tuple[Series, dict[str, Series]]:
    """(each service's new flows, each backend's new flows by backend name) in one agent's
    /metrics; backends are named by address (backend_names: address -> name), others are
    left out."""
    node: Series = {}
    backends: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            if s.name == NODE_METRIC:
                node[key] = s.value
            elif s.name == BACKEND_METRIC:
                name = backend_names.get(s.labels.get("backend", "").rpartition(":")[0])
                if name is not None:
                    backends.setdefault(name, {})[key] = s.value
    return node, backends


class TrafficSampler:
    def __init__(
        self,
        nodes: Mapping[str, Host],
        address: str,
        backend_names: Mapping[str, str],
        interval: float = 1.0,
    ) -> None:
        self._nodes = nodes
        self._url = f"http://{address}/metrics"
        self._names = backend_names
        self._interval = interval
        self._last: dict[str, tuple[Series, dict[str, Series]]] = {}
        self.by_node: list[Sample] = []
        self.by_backend: list[Sample] = []
        self.marks: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic-sampler", daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()  # the story's end

    def mark(self, label: str) -> None:
        self.marks.append((time.monotonic() - self._t0, label))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def _sample(self) -> None:
        t = time.monotonic() - self._t0
        for name, host in self._nodes.items():
            try:
                with host.entered(), urllib.request.urlopen(self._url, timeout=0.5) as resp:
                    self._last[name] = parse(resp.read().decode(), self._names)
            except (OSError, http.client.HTTPException, ValueError):
                # Failed, not up yet, or killed mid-answer (a truncated or garbled body):
                # its counters stand still, and the sampling goes on.
                pass
        backends: dict[str, Series] = {}
        for node, (_, per_backend) in self._last.items():
            for name, series in per_backend.items():
                backends.setdefault(name, {}).update({f"{node}/{k}": v for k, v in series.items()})
        self.by_node.append(Sample(t, {n: services for n, (services, _) in self._last.items()}))
        self.by_backend.append(Sample(t, backends))
