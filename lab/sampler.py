"""The lab's traffic over its story, from the metrics the agents export: a thread scrapes
each LB node's agent (`/metrics`, in the node's namespace) every `interval` seconds and keeps
the new-flow counters per LB node (every service) and per backend (summed over the nodes).

A node that does not answer (failed) keeps its last values: its counters stand still.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families
from weir.lab.chart import Sample
from weir.lab.netns import Host

NODE_METRIC = "weir_service_new_flows_total"
BACKEND_METRIC = "weir_backend_new_flows_total"


def parse(text: str, backend_names: Mapping[str, str]) -> tuple[float, dict[str, float]]:
    """(new flows of every service, new flows per backend name) in one agent's /metrics;
    backends are named by address (backend_names: address -> name), others left out."""
    node = 0.0
    backends: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == NODE_METRIC:
                node += s.value
            elif s.name == BACKEND_METRIC:
                name = backend_names.get(s.labels.get("backend", "").rpartition(":")[0])
                if name is not None:
                    backends[name] = backends.get(name, 0.0) + s.value
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
        self._last: dict[str, tuple[float, dict[str, float]]] = {}
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
            except OSError:
                pass  # failed or not up yet: its counters stand still
        backends: dict[str, float] = {}
        for _, per_backend in self._last.values():
            for name, value in per_backend.items():
                backends[name] = backends.get(name, 0.0) + value
        self.by_node.append(Sample(t, {n: v for n, (v, _) in self._last.items()}))
        self.by_backend.append(Sample(t, backends))
