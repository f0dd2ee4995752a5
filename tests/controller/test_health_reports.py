"""The health reports published on the Nodes (docs/HEALTH.md, several replicas): the
annotation's format and its limits, the cluster state keeping them beside the inputs, and the
tracker deciding from the fresh ones only."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from weir.controller.core.health import NodeReport
from weir.controller.core.healthreport import (
    ANN_HEALTH_REPORT,
    PublishedReports,
    decode,
    encode,
)
from weir.controller.core.nodeconfig import DEFAULT_LB_NODES
from weir.controller.core.parsing import ParseError
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.state import ClusterState
from weir.controller.metrics import Metrics
from weir.controller.plane.health import HealthTracker

FID = "192.0.2.1:80/TCP"


def report(node: str, *failing: str, checked: tuple[str, ...] = (FID,)) -> NodeReport:
    return NodeReport(node, frozenset(checked), {(FID, a, 80): (100, "refused") for a in failing})


class SkippingClock:
    """The tracker's clock: real time, ahead by what the test skipped."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


def node(name: str, text: str | None, lb: bool = True) -> dict:
    annotations = {ANN_HEALTH_REPORT: text} if text is not None else {}
    labels = {"weir.dev/load-balancer": "true"} if lb else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]},
    }


def test_a_report_goes_through_the_annotation_unchanged() -> None:
    r = NodeReport(
        "lb1",
        frozenset({FID, "192.0.2.2:80/TCP"}),
        {(FID, "10.0.0.1", 80): (100, "x" * 500), ("192.0.2.9:80/TCP", "10.0.0.2", 80): (1, "")},
    )
    got = decode("lb1", encode(r, "r0", 1234.9))
    assert (got.replica, got.renewed, got.truncated) == ("r0", 1234.0, 0)
    assert got.report.checked == r.checked
    # The reason is cut; a frontend it no longer checks is not reported.
    assert got.report.failing == {(FID, "10.0.0.1", 80): (100, "x" * 100)}


def test_a_report_too_big_leaves_whole_frontends_out_and_says_so() -> None:
    fids = [f"192.0.2.{i}:80/TCP" for i in range(200)]
    failing = {
        (f, f"10.0.{i}.{j}", 80): (1, "timeout") for i, f in enumerate(fids) for j in range(5)
    }
    text = encode(NodeReport("lb1", frozenset(fids), failing), "r0", 1, max_bytes=4096)
    assert len(text) <= 4096
    got = decode("lb1", text)
    assert got.truncated == 200 - len(got.report.checked) > 0
    # What is left is whole: every failing backend of every frontend it still votes on.
    assert got.report.failing == {k: v for k, v in failing.items() if k[0] in got.report.checked}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"v": 2}', "version 2"),
        ('{"v": 1, "replica": "r", "renewed": "now"}', "renewed"),
        ('{"v":1,"replica":"r","renewed":1,"checked":[1],"failing":[]}', "checked"),
        ('{"v":1,"replica":"r","renewed":1,"checked":[],"failing":[["f","a",80]]}', "failing[0]"),
        ("[" * 150_000 + "]" * 150_000, "characters"),
        ("[" * 50_000 + "]" * 50_000, "not JSON"),  # too deep for the parser
    ],
)
def test_a_malformed_report_is_a_parse_error_with_why(text: str, why: str) -> None:
    with pytest.raises(ParseError, match=re.escape(why)):
        decode("lb1", text)


def test_reports_count_for_ttl_after_the_reader_saw_them_change() -> None:
    reports = PublishedReports()
    # The writers' clocks say nothing to the reader: r1's is far behind, r0's far ahead.
    lb1 = encode(report("lb1", "10.0.0.1"), "r0", 9_999_999)
    bad = reports.update({"lb1": lb1, "lb2": encode(report("lb2"), "r1", 5), "lb3": "no"}, 100)
    assert list(bad) == ["lb3"]
    fresh, expiry = reports.fresh(now=125, ttl=30)
    assert sorted(r.node for r in fresh) == ["lb1", "lb2"]
    assert expiry == 130
    # lb2 is renewed (its text changes), lb1 is not (the same text again).
    assert reports.update({"lb1": lb1, "lb2": encode(report("lb2"), "r1", 6)}, 110) == {}
    fresh, expiry = reports.fresh(now=131, ttl=30)
    assert [r.node for r in fresh] == ["lb2"]
    assert expiry == 140
    # A report that goes and comes back is seen anew.
    reports.update({"lb2": encode(report("lb2"), "r1", 6)}, 132)
    reports.update({"lb1": lb1, "lb2": encode(report("lb2"), "r1", 6)}, 133)
    assert sorted(r.node for r in reports.fresh(now=134, ttl=30)[0]) == ["lb1", "lb2"]


def test_reports_do_not_age_while_the_nodes_are_out_of_sight() -> None:
    reports = PublishedReports()
    reports.update({"lb1": encode(report("lb1"), "r0", 1)}, 100)
    reports.pause(120)
    # Nothing can be renewed during an outage: the decision stays, nothing is due to expire.
    assert [r.node for r in reports.fresh(now=500, ttl=30)[0]] == ["lb1"]
    assert reports.fresh(now=500, ttl=30)[1] is None
    reports.pause(130)  # still the first moment out of sight
    reports.resume(520)
    # 20 s old at the pause: 10 s left after it.
    assert reports.fresh(now=529, ttl=30) == ([report("lb1")], 530)
    assert reports.fresh(now=531, ttl=30)[0] == []
    # A report first seen on the relist that ends the outage ages from then.
    reports.pause(600)
    reports.update({"lb2": encode(report("lb2"), "r0", 2)}, 700)
    reports.resume(700)
    assert reports.fresh(now=700, ttl=30) == ([report("lb2")], 730)


def test_the_state_keeps_reports_beside_the_inputs() -> None:
    state = ClusterState()
    seen: list[dict[str, str]] = []
    state.node_listeners.append(lambda: seen.append(dict(state.health_reports())))
    state.replace(frozenset({"Node"}), [node("lb1", "a"), node("lb2", None)])
    assert seen == [{"lb1": "a"}]
    generation = state.generation
    # A renewal changes the report only: reduce has nothing new to do.
    state.upsert(node("lb1", "b"))
    assert seen[-1] == {"lb1": "b"}
    assert state.generation == generation
    state.upsert(node("lb1", "b"))
    assert len(seen) == 2  # no change, no call
    # A malformed report leaves the Node as it is (the tracker reports it).
    state.upsert(node("lb2", "{bad"))
    assert set(state.inputs().nodes) == {"lb1", "lb2"}
    state.delete("Node", "", "lb1")
    assert seen[-1] == {"lb2": "{bad"}


async def test_the_tracker_decides_from_fresh_published_reports() -> None:
    state = ClusterState()
    tracker = HealthTracker(state, SnapshotStore(), Metrics())
    clock = SkippingClock()
    now = time.time()
    texts = {
        "lb1": encode(report("lb1", "10.0.0.1"), "r0", now),
        "lb2": encode(report("lb2", "10.0.0.1"), "r1", now),
        "lb3": encode(report("lb3"), "r1", now),
        "lb4": json.dumps({"v": 1}),
    }
    nodes = [node(n, t) for n, t in texts.items()]
    # Not an LB node: its report (its kubelet may write one) does not vote.
    nodes.append(node("w1", encode(report("w1", "10.0.0.1"), "r1", now), lb=False))
    state.replace(frozenset({"Node"}), nodes)
    task = asyncio.create_task(tracker.follow(state, 30, DEFAULT_LB_NODES, clock))
    try:
        async with asyncio.timeout(10):
            await tracker.changes.wait_past(0)
            assert tracker.decision.failing == {FID: frozenset({("10.0.0.1", 80)})}
            (err,) = state.errors()
            assert (err.kind, err.name) == ("Node", "lb4")
            assert f"annotation {ANN_HEALTH_REPORT}: replica: not a string" in err.message
            # 28 s later lb1 and lb3 are renewed, lb2 is not: 2 s after that it stops
            # counting (the tracker wakes for it), and 1 of 2 is no majority.
            clock.skipped = 28
            texts["lb1"] = encode(report("lb1", "10.0.0.1"), "r0", now + 28)
            texts["lb3"] = encode(report("lb3"), "r1", now + 28)
            for name in ("lb1", "lb3"):
                state.upsert(node(name, texts[name]))
            assert tracker.decision.failing == {FID: frozenset({("10.0.0.1", 80)})}
            await tracker.changes.wait_past(1)
            assert tracker.decision.failing == {}
            assert tracker.decision.checkers == {FID: 2}
            # An LB node no more: its vote goes with its label.
            state.upsert(node("lb3", texts["lb3"], lb=False))
            assert tracker.decision.checkers == {FID: 1}
            state.upsert(node("lb3", texts["lb3"]))
            # A change is decided on within the state's change, before any reduce sees it.
            state.upsert(node("lb3", encode(report("lb3", "10.0.0.1"), "r1", time.time())))
            assert state.inputs().failing == {FID: frozenset({("10.0.0.1", 80)})}
            # Fixed: the error goes.
            state.upsert(node("lb4", None))
            assert state.errors() == []
    finally:
        task.cancel()


async def test_an_api_outage_keeps_the_decision() -> None:
    state = ClusterState()
    tracker = HealthTracker(state, SnapshotStore(), Metrics())
    clock = SkippingClock()
    now = time.time()
    reports = {"lb1": report("lb1", "10.0.0.1"), "lb2": report("lb2", "10.0.0.1")}
    reports["lb3"] = report("lb3")
    state.replace(frozenset({"Node"}), [node(n, encode(r, "r0", now)) for n, r in reports.items()])
    task = asyncio.create_task(tracker.follow(state, 30, DEFAULT_LB_NODES, clock))
    out = {FID: frozenset({("10.0.0.1", 80)})}
    try:
        async with asyncio.timeout(10):
            await tracker.changes.wait_past(0)
            assert tracker.decision.failing == out
            seen = tracker.changes.value
            # The Nodes out of sight for 1000 s: nobody could renew, nothing expired.
            state.following("Node", False)
            clock.skipped = 1000
            state.following("Node", True)
            assert tracker.decision.failing == out and tracker.changes.value == seen
            # Back in sight, they age on: lb3 is renewed 29 s later, lb1 and lb2 are not
            # and go a second after (the tracker wakes for it).
            clock.skipped += 29
            state.upsert(node("lb3", encode(reports["lb3"], "r0", now + 29)))
            assert tracker.decision.failing == out
            await tracker.changes.wait_past(seen)
            assert tracker.decision.failing == {}
            assert tracker.decision.checkers == {FID: 1}
    finally:
        task.cancel()
