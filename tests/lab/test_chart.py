"""The lab's traffic chart (pure Python): shares from known counter samples, and the
agents' /metrics parsed into them."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator, Mapping
from typing import cast

from weir.lab.chart import LEVELS, Sample, intervals, render
from weir.lab.netns import Host
from weir.lab.sampler import TrafficSampler, parse

NODES = ["lb1", "lb2", "lb3"]


def story() -> list[Sample]:
    """Cumulative counters: 3 intervals evenly shared, then lb3 fails (stands still) for 3,
    then its agent comes back with counters reset to 0 and takes a third again."""
    a = b = c = 0.0
    out = [Sample(0.0, rows(a, b, c))]
    for t in range(1, 10):
        if t <= 3:
            a, b, c = a + 100, b + 100, c + 100
        elif t <= 6:
            a, b = a + 150, b + 150
        else:
            c = 0.0 if t == 7 else c
            a, b, c = a + 100, b + 100, c + 100
        out.append(Sample(float(t), rows(a, b, c)))
    return out


def rows(a: float, b: float, c: float) -> dict[str, dict[str, float]]:
    """Each node with two series (services) sharing its count."""
    return {n: {"web": v / 2, "shop": v / 2} for n, v in zip(NODES, (a, b, c), strict=True)}


def test_intervals_count_deltas_and_survive_a_reset() -> None:
    spans = intervals(story())
    assert [s.counts["lb3"] for s in spans] == [100, 100, 100, 0, 0, 0, 100, 100, 100]
    assert [s.counts["lb1"] for s in spans] == [100] * 3 + [150] * 3 + [100] * 3


def test_a_series_that_goes_or_comes_adds_nothing() -> None:
    """A backend removed takes its series along (not a reset); one that appears has no
    increase before its second sample."""
    samples = [
        Sample(0.0, {"b1": {"lb1": 10.0}, "b4": {"lb1": 50.0, "lb2": 40.0}}),
        Sample(1.0, {"b1": {"lb1": 20.0}, "b4": {"lb2": 45.0}}),
        Sample(2.0, {"b1": {"lb1": 30.0, "lb2": 7.0}, "b4": {"lb2": 46.0}}),
        Sample(3.0, {"b1": {"lb1": 30.0, "lb2": 9.0}}),
    ]
    assert [dict(s.counts) for s in intervals(samples)] == [
        {"b1": 10, "b4": 5}, {"b1": 10, "b4": 1}, {"b1": 2},
    ]  # fmt: skip


def test_the_chart_shows_each_rows_share_per_interval_and_overall() -> None:
    text = render("new flows per LB node", story(), NODES, [(0.0, "1"), (3.0, "3")])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    rows = {line.split()[0]: line for line in lines[1:4]}
    third, half = LEVELS[round(8 / 3)], LEVELS[4]
    cells = {n: rows[n][9 : 9 + 9] for n in NODES}
    assert cells["lb3"] == third * 3 + LEVELS[0] * 3 + third * 3
    assert cells["lb1"] == third * 3 + half * 3 + third * 3
    # Over the story: lb1 and lb2 1050 each, lb3 600 (of 2700).
    assert rows["lb1"].split()[-2:] == ["1050", "38.9%"]
    assert rows["lb3"].split()[-2:] == ["600", "22.2%"]
    axis = lines[4]
    assert axis[9] == "1" and axis[9 + 3] == "3" and axis.endswith("0-9 s")


def test_a_long_story_fits_in_100_columns() -> None:
    samples = [Sample(float(t), {"lb1": {"": 10.0 * t}, "lb2": {"": 5.0 * t}}) for t in range(500)]
    lines = render("long", samples, ["lb1", "lb2"]).splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[1].split()[-1] == "66.7%" and lines[2].split()[-1] == "33.3%"


def test_agent_metrics_parsed_per_node_and_backend() -> None:
    text = "\n".join([
        "# TYPE weir_service_new_flows_total counter",
        'weir_service_new_flows_total{namespace="d",name="web",vip="192.0.2.10",port="80",'
        'protocol="TCP"} 30',
        'weir_service_new_flows_total{namespace="d",name="shop",vip="192.0.2.20",port="80",'
        'protocol="TCP"} 12',
        "# TYPE weir_backend_new_flows_total counter",
        'weir_backend_new_flows_total{namespace="d",name="web",vip="192.0.2.10",port="80",'
        'protocol="TCP",backend="10.0.0.1:80",backend_node=""} 20',
        'weir_backend_new_flows_total{namespace="d",name="web",vip="192.0.2.10",port="80",'
        'protocol="TCP",backend="10.0.0.2:80",backend_node=""} 10',
        'weir_backend_new_flows_total{namespace="d",name="shop",vip="192.0.2.20",port="80",'
        'protocol="TCP",backend="10.244.1.10:8080",backend_node="10.66.2.11"} 12',
    ]) + "\n"  # fmt: skip
    node, backends = parse(text, {"10.0.0.1": "b1", "10.0.0.2": "b2"})
    assert sorted(node.values()) == [12, 30] and len(set(node)) == 2
    assert {name: list(series.values()) for name, series in backends.items()} == {
        "b1": [20], "b2": [10],
    }  # fmt: skip


def test_nan_and_infinite_values_count_nothing() -> None:
    """A series that reads NaN or ±Inf (a broken exporter) adds nothing, before or after:
    the chart is still drawn, from the other series."""
    nan, inf = float("nan"), float("inf")
    samples = [
        Sample(0.0, {"lb1": {"a": 0.0, "b": 0.0}, "lb2": {"a": 0.0}}),
        Sample(1.0, {"lb1": {"a": 10.0, "b": nan}, "lb2": {"a": 10.0}}),
        Sample(2.0, {"lb1": {"a": 20.0, "b": 5.0}, "lb2": {"a": inf}}),
        Sample(3.0, {"lb1": {"a": 30.0, "b": -inf}, "lb2": {"a": 20.0}}),
    ]
    assert [dict(s.counts) for s in intervals(samples)] == [
        {"lb1": 10, "lb2": 10}, {"lb1": 10, "lb2": 0}, {"lb1": 10, "lb2": 0},
    ]  # fmt: skip
    lines = render("broken", samples, ["lb1", "lb2"]).splitlines()
    assert lines[1].split()[-2:] == ["30", "75.0%"] and lines[2].split()[-2:] == ["10", "25.0%"]


def test_long_names_huge_counts_and_many_rows_fit_in_100_columns() -> None:
    names = [f"backend-{i}-with-a-long-name" for i in range(300)]
    samples = [
        Sample(float(t), {n: {"": 1e12 * t * (i + 1)} for i, n in enumerate(names)})
        for t in range(3)
    ]
    lines = render("x" * 150, samples, names, [(0.0, ""), (1.0, "2")]).splitlines()
    assert len(lines) == 302 and max(len(line) for line in lines) <= 100
    # Each row still says its total, shortened, and its share.
    assert lines[1].split()[-2:] == ["2.0T", "0.0%"] and lines[-2].split()[-1] == "0.7%"


class _Here:
    """A stand-in for a lab host: the test's own network namespace."""

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        yield


def test_a_broken_metrics_answer_leaves_the_node_standing_still() -> None:
    """An agent killed mid-answer (a truncated body) or answering garbage keeps its last
    values, as one that does not answer: the sampler goes on (its thread must not die)."""
    good = 'weir_service_new_flows_total{name="web"} 7\n'
    answers = [b"truncated", b"garbage {{{\n", good.encode()]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers.pop(0)
            self.send_response(200)
            self.send_header(
                "Content-Length", str(len(body) + (1000 if body == b"truncated" else 0))
            )
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hosts = cast(Mapping[str, Host], {"lb1": _Here()})
        sampler = TrafficSampler(hosts, f"127.0.0.1:{server.server_address[1]}", {})
        for _ in range(3):
            sampler._sample()
    finally:
        server.shutdown()
        server.server_close()
    assert [dict(s.counters) for s in sampler.by_node] == [{}, {}, {"lb1": {"name=web": 7.0}}]
