"""The agent rebuilds its node's view from a snapshot and deltas, node_config included, and
checks every rebuilt view against the hash the controller computed (weir.common.viewhash)."""

from __future__ import annotations

import pytest
from weir.common import viewhash
from weir.common.pb import pb
from weir.nodeagent.agent import desired_of
from weir.nodeagent.controller_client import ResyncNeeded, apply_message
from weir.nodeagent.service import LocalEndpoint

SID = "192.0.2.10:80/TCP"


def endpoint(address: str) -> pb.LocalEndpoint:
    return pb.LocalEndpoint(
        service_id=SID,
        vip="192.0.2.10",
        port=80,
        protocol=pb.PROTOCOL_TCP,
        address=address,
        target_port=8080,
    )


def config(*pods: str, lb: bool = False) -> pb.NodeConfig:
    return pb.NodeConfig(
        load_balancer=lb,
        address="10.1.0.5",
        encap_port=6093,
        local_endpoints=[endpoint(p) for p in pods],
        lb_node_addresses=["10.0.0.11", "10.0.0.12"],
    )


def snapshot(version: int, node_config: pb.NodeConfig) -> pb.ControllerMessage:
    snap = pb.Snapshot(version=version, node="n1", maglev_seed=7, node_config=node_config)
    snap.hash = viewhash.view_hash(snap)
    return pb.ControllerMessage(snapshot=snap)


def delta(base: int, node_config: pb.NodeConfig | None) -> pb.ControllerMessage:
    """A delta to the view whose node_config is node_config (None: unchanged from base,
    which then must be config("10.244.1.7"))."""
    after = node_config if node_config is not None else config("10.244.1.7")
    full = pb.Snapshot(node="n1", maglev_seed=7, node_config=after)
    d = pb.Delta(
        version=base + 1,
        base_version=base,
        maglev_seed=7,
        hash=viewhash.view_hash(full),
        node_config_changed=node_config is not None,
    )
    if node_config is not None:
        d.node_config.CopyFrom(node_config)
    return pb.ControllerMessage(delta=d)


def test_deltas_carry_node_config_only_when_it_changed() -> None:
    first = apply_message(None, "n1", snapshot(1, config("10.244.1.7")))
    assert first.node_config_changed
    kept = apply_message(first.view, "n1", delta(1, None))
    assert not kept.node_config_changed
    assert kept.view.node_config == first.view.node_config
    changed = apply_message(kept.view, "n1", delta(2, config("10.244.1.7", "10.244.1.8")))
    assert changed.node_config_changed
    assert [e.address for e in changed.view.node_config.local_endpoints] == [
        "10.244.1.7",
        "10.244.1.8",
    ]
    # The rebuilt view is the controller's: same snapshot, same hash.
    again = changed.view.snapshot()
    assert again.node_config == changed.view.node_config
    assert viewhash.view_hash(again) == changed.view.hash


def test_a_node_config_that_does_not_match_the_hash_asks_for_a_snapshot() -> None:
    first = apply_message(None, "n1", snapshot(1, config("10.244.1.7")))
    wrong = delta(1, config("10.244.1.8"))
    wrong.delta.node_config.local_endpoints[0].address = "10.244.1.9"  # not what was hashed
    with pytest.raises(ResyncNeeded, match="hash mismatch"):
        apply_message(first.view, "n1", wrong)
    dropped = delta(1, config("10.244.1.8"))
    dropped.delta.node_config_changed = False  # the change would be lost: the hash says so
    with pytest.raises(ResyncNeeded, match="hash mismatch"):
        apply_message(first.view, "n1", dropped)


def test_losing_every_setting_is_a_change_too() -> None:
    first = apply_message(None, "n1", snapshot(1, config("10.244.1.7", lb=True)))
    cleared = apply_message(first.view, "n1", delta(1, pb.NodeConfig()))
    assert cleared.node_config_changed and not cleared.view.node_config.ByteSize()
    assert not desired_of(cleared.view).node.load_balancer


def test_the_agent_converts_node_config_once() -> None:
    view = apply_message(None, "n1", snapshot(3, config("10.244.1.8", "10.244.1.7", lb=True)))
    node = desired_of(view.view).node
    assert node.load_balancer and node.address == "10.1.0.5" and node.encap_port == 6093
    assert node.lb_nodes == {"10.0.0.11", "10.0.0.12"}
    assert node.local_endpoints == (
        LocalEndpoint(SID, "192.0.2.10", 80, 6, "10.244.1.7", 8080),
        LocalEndpoint(SID, "192.0.2.10", 80, 6, "10.244.1.8", 8080),
    )
    # A view without NodeConfig: no role, and the default encapsulation port.
    bare = desired_of(apply_message(None, "n1", snapshot(1, pb.NodeConfig())).view).node
    assert not bare.load_balancer and not bare.local_endpoints and bare.encap_port == 6093


def test_a_controller_that_predates_node_roles_keeps_its_load_balancers() -> None:
    """During an upgrade an older controller sends services, and no NodeConfig, to the
    load-balancer nodes only: they keep serving."""
    svc = pb.Service(id=SID, vip="192.0.2.10", port=80, protocol=pb.PROTOCOL_TCP)
    snap = pb.Snapshot(version=1, node="n1", maglev_seed=7, services=[svc])
    snap.hash = viewhash.view_hash(snap)
    old = apply_message(None, "n1", pb.ControllerMessage(snapshot=snap)).view
    assert desired_of(old).node.load_balancer
    snap.node_config.address = "10.1.0.5"  # a controller that knows roles: no role given
    snap.hash = viewhash.view_hash(snap)
    new = apply_message(None, "n1", pb.ControllerMessage(snapshot=snap)).view
    assert not desired_of(new).node.load_balancer
