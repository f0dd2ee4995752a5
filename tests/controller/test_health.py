"""Active health checks on the controller's side (docs/HEALTH.md): the annotations, the
majority rule, reduce holding out failing backends (fail open when all fail), and the
tracker turning agents' reports into the state and ListHealth."""

from __future__ import annotations

import pytest
from weir.common.pb import pb
from weir.controller.core.health import NodeReport, decide
from weir.controller.core.healthcheck import parse_health_check
from weir.controller.core.reduce import FAIL_OPEN, reduce
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.metrics import Metrics
from weir.controller.plane.health import HealthTracker

from tests.controller.reduce_support import (
    FILES,
    endpoint_slice,
    errors_for,
    service,
    state_of,
)

FID = "192.0.2.1:80/TCP"
CHECKED = {"weir.dev/health-check": "http", "weir.dev/health-check-interval": "500ms"}
ADDRS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def objects(annotations: dict[str, str] | None = CHECKED) -> list[dict]:
    return [
        service("web", annotations=annotations, spec={"ports": [{"name": "http", "port": 80}]}),
        endpoint_slice("web-1", "web", ADDRS, ports=(("http", 80, "TCP"),), node=None),
    ]


def report(node: str, *failing: str, checked: tuple[str, ...] = (FID,)) -> NodeReport:
    return NodeReport(node, frozenset(checked), {(FID, a, 80): (100, "refused") for a in failing})


def test_annotations_give_the_check_with_defaults_and_warn_on_bad_fields() -> None:
    warnings: list[str] = []
    spec = parse_health_check(
        {**CHECKED, "weir.dev/health-check-fall": "zero", "weir.dev/health-check-path": "/h z"},
        warnings,
    )
    assert spec is not None
    hc = spec.to_pb()
    assert (hc.type, hc.interval_ms, hc.timeout_ms, hc.rise, hc.fall) == (
        pb.HEALTH_CHECK_HTTP, 500, 500, 2, 3,
    )  # fmt: skip
    assert (hc.http_path, hc.http_status, hc.check_encapsulated) == ("/", 200, False)
    assert len(warnings) == 2
    assert parse_health_check({}, []) is None
    assert parse_health_check({"weir.dev/health-check": "icmp"}, warnings) is None


def test_a_backend_is_failing_only_when_most_checking_nodes_see_it() -> None:
    one_of_three = decide([report("lb1", "10.0.0.1"), report("lb2"), report("lb3")])
    assert one_of_three.failing == {}
    assert [f.node for f in one_of_three.seen[(FID, "10.0.0.1", 80)]] == ["lb1"]
    two_of_three = decide([report("lb1", "10.0.0.1"), report("lb2", "10.0.0.1"), report("lb3")])
    assert two_of_three.failing == {FID: frozenset({("10.0.0.1", 80)})}
    # Two nodes split one each: a tie is not a majority.
    assert decide([report("lb1", "10.0.0.1"), report("lb2")]).failing == {}
    # A node that does not check the frontend neither counts nor votes.
    stale = decide([report("lb1", "10.0.0.1"), report("lb2", "10.0.0.1", checked=())])
    assert stale.checkers == {FID: 1} and stale.failing == {FID: frozenset({("10.0.0.1", 80)})}


def test_reduce_holds_out_failing_backends_and_carries_the_check() -> None:
    st = state_of(objects())
    st.set_failing({FID: frozenset({("10.0.0.2", 80)})})
    result = reduce(st.inputs(), FILES)
    (svc,) = result.cluster.services
    assert [b.address for b in svc.backends] == ["10.0.0.1", "10.0.0.3"]
    assert [b.address for b in svc.unhealthy] == ["10.0.0.2"]
    assert svc.health_check.type == pb.HEALTH_CHECK_HTTP
    assert not errors_for(result, "Service", "web")


def test_every_backend_failing_fails_open_with_an_error() -> None:
    st = state_of(objects())
    st.set_failing({FID: frozenset((a, 80) for a in ADDRS)})
    result = reduce(st.inputs(), FILES)
    (svc,) = result.cluster.services
    assert [b.address for b in svc.backends] == list(ADDRS) and not svc.unhealthy
    assert errors_for(result, "Service", "web") == [f"frontend {FID}: {FAIL_OPEN}"]


def test_the_tracker_publishes_a_change_and_lists_who_sees_what() -> None:
    st = state_of(objects())
    store = SnapshotStore()
    tracker = HealthTracker(st, store, Metrics())
    failing = pb.NodeStatus(
        health_checked=[FID],
        health_failing=[
            pb.BackendHealth(service_id=FID, address="10.0.0.2", port=80, since_unix=5, reason="x")
        ],
    )
    healthy = pb.NodeStatus(health_checked=[FID])
    generation = st.generation
    tracker.update([("lb1", failing), ("lb2", healthy), ("lb3", healthy)])
    assert st.generation == generation  # one node of three: nothing changes
    tracker.update([("lb1", failing), ("lb2", failing), ("lb3", healthy)])
    assert st.generation == generation + 1
    assert st.inputs().failing == {FID: frozenset({("10.0.0.2", 80)})}
    store.publish(reduce(st.inputs(), FILES).cluster)
    (entry,) = tracker.list_health().backends
    assert (entry.address, entry.state, entry.checkers) == ("10.0.0.2", "out", 3)
    assert [f.node for f in entry.failing] == ["lb1", "lb2"] and entry.since_unix > 0
    tracker.update([("lb1", failing), ("lb3", healthy)])  # lb2 disconnected: 1 of 2
    assert st.inputs().failing == {}


@pytest.mark.parametrize("annotations", [None, {"weir.dev/health-check": "none"}])
def test_without_a_check_nothing_is_carried(annotations: dict[str, str] | None) -> None:
    (svc,) = reduce(state_of(objects(annotations)).inputs(), FILES).cluster.services
    assert not svc.HasField("health_check") and not svc.unhealthy


def test_https_checks_carry_the_host_and_a_bad_host_falls_back() -> None:
    warnings: list[str] = []
    https = {"weir.dev/health-check": "https", "weir.dev/health-check-host": "Web.Example.com"}
    spec = parse_health_check({**https, "weir.dev/health-check-path": "/healthz"}, warnings)
    assert spec is not None and not warnings
    hc = spec.to_pb()
    assert (hc.type, hc.host, hc.http_path, hc.http_status) == (
        pb.HEALTH_CHECK_HTTPS, "web.example.com", "/healthz", 200,
    )  # fmt: skip
    bad = parse_health_check({**https, "weir.dev/health-check-host": "web:443"}, warnings)
    assert bad is not None and bad.host == "" and len(warnings) == 1
    # The file source's manifests take the same annotations.
    (svc,) = reduce(state_of(objects(https)).inputs(), FILES).cluster.services
    assert (svc.health_check.type, svc.health_check.host) == (
        pb.HEALTH_CHECK_HTTPS,
        "web.example.com",
    )
    # A TCP check sends no HTTP fields.
    tcp = parse_health_check({"weir.dev/health-check": "tcp"}, [])
    assert tcp is not None and tcp.to_pb().host == "" and tcp.to_pb().http_path == ""
