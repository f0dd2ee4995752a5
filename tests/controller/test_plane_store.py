"""SnapshotStore: versions, history, and the encoded messages (no gRPC here)."""

from __future__ import annotations

import pytest
from weir.common import viewhash
from weir.common.pb import pb
from weir.controller.core import views
from weir.controller.core.snapshots import SnapshotStore
from weir.nodeagent.controller_client import NodeView, ResyncNeeded, apply_message

from tests.controller.plane_support import bgp_config, cluster, service

S1 = service("192.0.2.1", 80, [("10.0.0.1", 8080)])
S2 = service("192.0.2.2", 443, [("10.0.0.2", 8443), ("10.0.0.3", 8443)])
S2B = service("192.0.2.2", 443, [("10.0.0.2", 8443)])
BGP_A = bgp_config(65001, "10.9.0.1", ["192.0.2.1/32"])
BGP_A2 = bgp_config(65001, "10.9.0.1", ["192.0.2.1/32", "192.0.2.2/32"])
LB = ["a", "b"]  # load-balancer nodes: their views carry the services


def decode(data: bytes) -> pb.ControllerMessage:
    return pb.ControllerMessage.FromString(data)


def test_same_content_makes_no_new_version() -> None:
    store = SnapshotStore()
    assert store.version == 0
    assert store.publish(cluster([S1, S2], lb=LB)) == 1
    # Same content in another order: the same version.
    assert store.publish(cluster([S2, S1], lb=LB)) == 1
    assert store.publish(cluster([S1, S2B], lb=LB)) == 2
    assert store.publish(cluster([S1, S2B], seed=8, lb=LB)) == 3
    assert store.publish(cluster([S1, S2B], {"a": BGP_A}, seed=8, lb=LB)) == 4
    assert store.publish(cluster([S1, S2B], {"a": BGP_A}, seed=8, lb=LB)) == 4
    assert store.cluster().version == 4


def test_full_snapshot_is_the_node_view() -> None:
    store = SnapshotStore()
    c = cluster([S1, S2], {"a": BGP_A}, lb=LB)
    v = store.publish(c)
    for node in ("a", "b"):
        version, data, full = store.message(node, 0)
        snap = decode(data).snapshot
        assert (version, full) == (v, True)
        assert snap.node == node and snap.version == v and snap.base_version == 0
        assert [s.id for s in snap.services] == sorted([S1.id, S2.id])
        assert snap.bgp == (BGP_A if node == "a" else pb.BGPConfig())
        assert snap.hash == viewhash.view_hash(snap) == store.node_hash(node, v)
    assert store.node_hash("a", v) != store.node_hash("b", v)


def test_full_snapshot_matches_controller_views() -> None:
    store = SnapshotStore()
    c = cluster([S1, S2], {"a": BGP_A}, lb=LB)
    v = store.publish(c)
    for node in ("a", "b"):
        expected = views.node_view(c, node)
        expected.version = v
        assert store.node_snapshot(node) == expected
    assert store.cluster().hash == views.cluster_hash(c)


def test_delta_carries_only_changes_and_rebuilds_the_view() -> None:
    store = SnapshotStore()
    v1 = store.publish(cluster([S1, S2], {"a": BGP_A}, lb=LB))
    v2 = store.publish(cluster([S2B], {"a": BGP_A2}, lb=LB))
    version, data, full = store.message("a", v1)
    delta = decode(data).delta
    assert (version, full) == (v2, False)
    assert (delta.version, delta.base_version) == (v2, v1)
    assert [s.id for s in delta.upserted] == [S2B.id]
    assert list(delta.removed) == [S1.id]
    assert delta.bgp_changed and delta.bgp == BGP_A2
    # Node b's BGP did not change; the services part is the same bytes.
    delta_b = decode(store.message("b", v1)[1]).delta
    assert not delta_b.bgp_changed
    assert delta_b.upserted == delta.upserted

    base = NodeView.from_snapshot(decode(store.message("a", 0)[1]).snapshot)
    assert base.version == v2  # a full snapshot is always of the latest
    old = apply_message(None, "a", pb.ControllerMessage(snapshot=_snapshot_at(v1)))
    update = apply_message(old.view, "a", decode(data))
    assert update.view.snapshot() == store.node_snapshot("a")
    assert update.removed == (S1.id,) and update.bgp_changed


def _snapshot_at(version: int) -> pb.Snapshot:
    """Node a's view at version 1 of the test above, built independently."""
    snap = pb.Snapshot(
        version=version,
        node="a",
        maglev_seed=7,
        services=[S1, S2],
        bgp=BGP_A,
        node_config=pb.NodeConfig(load_balancer=True),
    )
    snap.hash = viewhash.view_hash(snap)
    return snap


def test_history_is_bounded() -> None:
    store = SnapshotStore(history=3)
    for i in range(5):
        store.publish(cluster([service("192.0.2.1", 80 + i, [])], lb=LB))
    assert store.version == 5
    assert store.node_hash("a", 2) is None and store.node_hash("a", 3) is not None
    assert store.message("a", 2)[2] is True  # too old: full snapshot
    assert store.message("a", 3)[2] is False


def test_history_shares_unchanged_service_bytes() -> None:
    store = SnapshotStore()
    store.publish(cluster([S1, S2], lb=LB))
    first = store.latest
    store.publish(cluster([S1, S2B], lb=LB))
    assert first is not None and store.latest is not None
    assert first.services[S1.id] is store.latest.services[S1.id]


def test_client_rejects_a_delta_with_a_wrong_hash_or_base() -> None:
    store = SnapshotStore()
    v1 = store.publish(cluster([S1], lb=LB))
    store.publish(cluster([S1, S2], lb=LB))
    view = apply_message(None, "a", decode(store.message("a", 0)[1])).view
    store.publish(cluster([S2], lb=LB))
    delta = decode(store.message("a", v1)[1])
    with pytest.raises(ResyncNeeded, match="but have 2"):
        apply_message(view, "a", delta)  # base 1, the client has 2
    good = decode(store.message("a", 2)[1])
    assert apply_message(view, "a", good).view.version == 3
    good.delta.hash = "0" * 64
    with pytest.raises(ResyncNeeded, match="hash mismatch"):
        apply_message(view, "a", good)
    with pytest.raises(ResyncNeeded, match="not 'b'"):
        apply_message(None, "b", decode(store.message("a", 0)[1]))
