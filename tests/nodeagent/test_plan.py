"""The agent's plan: diffing the applied state against a node view."""

from __future__ import annotations

from weir.common.pb import pb
from weir.nodeagent.plan import (
    AppliedState,
    BackendSpec,
    ChangeKind,
    make_plan,
    service_spec,
)


def backend(addr: str, port: int = 8080, weight: int = 1, ready: bool = True, serving=None):
    return pb.Backend(
        address=addr,
        port=port,
        weight=weight,
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=not ready,
    )


def service(vip: str = "192.0.2.10", port: int = 80, backends=None, **kw) -> pb.Service:
    if backends is None:
        backends = [backend("10.0.0.1"), backend("10.0.0.2")]
    return pb.Service(
        id=f"{vip}:{port}/TCP",
        vip=vip,
        port=port,
        protocol=pb.PROTOCOL_TCP,
        strategy=kw.pop("strategy", pb.STRATEGY_MAGLEV),
        maglev_table_size=kw.pop("table_size", 16381),
        backends=backends,
        **kw,
    )


def view(*services: pb.Service, seed: int = 7, bgp: pb.BGPConfig | None = None) -> pb.Snapshot:
    return pb.Snapshot(
        version=1, node="n1", maglev_seed=seed, services=services, bgp=bgp or pb.BGPConfig()
    )


def applied_from(v: pb.Snapshot) -> AppliedState:
    plan = make_plan(AppliedState(), v)
    return AppliedState().after(plan, applied=plan.to_apply, removed=plan.removed)


def test_first_view_adds_everything_and_sets_seed() -> None:
    v = view(service(port=80), service(port=443))
    plan = make_plan(AppliedState(), v)
    assert [s.id for s in plan.added] == ["192.0.2.10:443/TCP", "192.0.2.10:80/TCP"]
    assert plan.changed == () and plan.removed == () and plan.unchanged == ()
    assert plan.seed == 7 and plan.seed_changed
    assert plan.bgp == pb.BGPConfig()


def test_same_view_again_is_empty() -> None:
    v = view(service(port=80), service(port=443))
    plan = make_plan(applied_from(v), v)
    assert plan.empty
    assert plan.unchanged == ("192.0.2.10:443/TCP", "192.0.2.10:80/TCP")
    assert plan.to_apply == ()


def test_backend_order_and_unused_fields_do_not_matter() -> None:
    a = view(service(backends=[backend("10.0.0.1"), backend("10.0.0.2")]))
    b = view(
        service(
            backends=[
                pb.Backend(address="10.0.0.2", port=8080, weight=1, ready=True, node="x"),
                pb.Backend(address="10.0.0.1", port=8080, weight=0, ready=True),
            ]
        )
    )
    assert make_plan(applied_from(a), b).empty


def test_classifies_backend_changes() -> None:
    old = view(service(backends=[backend("10.0.0.1"), backend("10.0.0.2")]))
    new = view(service(backends=[backend("10.0.0.1"), backend("10.0.0.3")]))
    plan = make_plan(applied_from(old), new)
    (change,) = plan.changed
    assert change.kinds == {ChangeKind.BACKENDS}
    assert change.rebuilds_table
    assert change.backends_added == (BackendSpec("10.0.0.3", 8080),)
    assert change.backends_removed == (BackendSpec("10.0.0.2", 8080),)


def test_classifies_weights_only() -> None:
    old = view(service(backends=[backend("10.0.0.1"), backend("10.0.0.2")]))
    new = view(service(backends=[backend("10.0.0.1", weight=3), backend("10.0.0.2")]))
    (change,) = make_plan(applied_from(old), new).changed
    assert change.kinds == {ChangeKind.WEIGHTS}
    assert change.new.weights == (3, 1)
    assert change.backends_added == () and change.backends_removed == ()


def test_equal_weights_are_the_unweighted_table() -> None:
    spec = service_spec(
        service(backends=[backend("10.0.0.1", weight=5), backend("10.0.0.2", weight=5)])
    )
    assert spec.weights is None


def test_classifies_table_size_strategy_and_affinity() -> None:
    old = view(service())
    plan = make_plan(applied_from(old), view(service(table_size=251)))
    assert plan.changed[0].kinds == {ChangeKind.TABLE_SIZE}
    plan = make_plan(applied_from(old), view(service(strategy=pb.STRATEGY_RANDOM)))
    assert plan.changed[0].kinds == {ChangeKind.STRATEGY}
    plan = make_plan(
        applied_from(old),
        view(service(session_affinity=pb.SESSION_AFFINITY_CLIENT_IP, affinity_timeout_seconds=60)),
    )
    (change,) = plan.changed
    assert change.kinds == {ChangeKind.AFFINITY}
    assert not change.rebuilds_table


def test_several_kinds_at_once() -> None:
    old = view(service())
    new = view(service(table_size=251, backends=[backend("10.0.0.9")]))
    (change,) = make_plan(applied_from(old), new).changed
    assert change.kinds == {ChangeKind.TABLE_SIZE, ChangeKind.BACKENDS}


def test_backends_are_the_ones_the_controller_chose() -> None:
    # The controller already applied KEP-1669 (a serving-terminating fallback arrives with
    # ready=False): the agent programs what it was sent.
    svc = service(backends=[backend("10.0.0.2", ready=False, serving=True), backend("10.0.0.1")])
    assert service_spec(svc).backends == (
        BackendSpec("10.0.0.1", 8080),
        BackendSpec("10.0.0.2", 8080),
    )


def test_removed_and_unchanged() -> None:
    old = view(service(port=80), service(port=443), service(port=8443))
    new = view(service(port=80), service(port=8443, backends=[backend("10.0.0.1")]))
    plan = make_plan(applied_from(old), new)
    assert plan.removed == ("192.0.2.10:443/TCP",)
    assert plan.unchanged == ("192.0.2.10:80/TCP",)
    assert [c.id for c in plan.changed] == ["192.0.2.10:8443/TCP"]
    assert not plan.seed_changed and plan.bgp is None


def test_seed_change_rebuilds_every_maglev_table() -> None:
    # random + ClientIP hashes the client address: its table must follow the seed too,
    # or nodes that built it under different seeds would disagree on a client's backend.
    sticky = service(
        port=82, strategy=pb.STRATEGY_RANDOM, session_affinity=pb.SESSION_AFFINITY_CLIENT_IP
    )
    old = view(service(port=80), service(port=81, strategy=pb.STRATEGY_RANDOM), sticky, seed=1)
    plan = make_plan(applied_from(old), view(*old.services, seed=2))
    assert plan.seed_changed and plan.seed == 2
    assert [(c.id, c.kinds) for c in plan.changed] == [
        ("192.0.2.10:80/TCP", {ChangeKind.SEED}),
        ("192.0.2.10:82/TCP", {ChangeKind.SEED}),
    ]
    assert plan.unchanged == ("192.0.2.10:81/TCP",)


def test_adopted_services_are_rederived_or_removed() -> None:
    state = AppliedState.adopted(["192.0.2.10:80/TCP", "192.0.2.99:80/TCP"])
    plan = make_plan(state, view(service(port=80), service(port=81)))
    assert [s.id for s in plan.added] == ["192.0.2.10:81/TCP"]
    (change,) = plan.changed
    assert change.old is None and change.kinds == {ChangeKind.ADOPTED} and change.rebuilds_table
    assert change.backends_added == change.new.backends
    assert plan.removed == ("192.0.2.99:80/TCP",)
    assert plan.seed_changed


def test_failed_services_are_planned_again() -> None:
    v = view(service(port=80), service(port=81))
    plan = make_plan(AppliedState(), v)
    ok = [s for s in plan.to_apply if s.port == 80]
    state = AppliedState().after(plan, applied=ok, removed=plan.removed)
    again = make_plan(state, v)
    assert [s.id for s in again.added] == ["192.0.2.10:81/TCP"]
    assert again.unchanged == ("192.0.2.10:80/TCP",)


def test_failed_change_keeps_old_spec() -> None:
    old = view(service(backends=[backend("10.0.0.1")]))
    new = view(service(backends=[backend("10.0.0.2")]))
    state = applied_from(old)
    plan = make_plan(state, new)
    state2 = state.after(plan, applied=[], removed=[])
    assert state2.services == state.services
    assert make_plan(state2, new).changed[0].kinds == {ChangeKind.BACKENDS}


def test_bgp_changes() -> None:
    bgp = pb.BGPConfig(local_asn=64512, peers=[pb.BGPPeer(name="r1", address="10.0.0.254")])
    old = view(service(), bgp=bgp)
    state = applied_from(old)
    assert make_plan(state, old).bgp is None
    bgp2 = pb.BGPConfig()
    bgp2.CopyFrom(bgp)
    bgp2.advertisements.add(prefix="192.0.2.10/32")
    plan = make_plan(state, view(service(), bgp=bgp2))
    assert plan.bgp == bgp2 and not plan.empty
    # A BGP change the speaker could not apply is planned again.
    state2 = state.after(plan, applied=[], removed=[], bgp_applied=False)
    assert make_plan(state2, view(service(), bgp=bgp2)).bgp == bgp2


def test_accepts_the_clients_node_view() -> None:
    from weir.nodeagent.controller_client import NodeView

    snap = view(service(port=80), service(port=443))
    snap.hash = "x"
    plan = make_plan(AppliedState(), NodeView.from_snapshot(snap))
    assert [s.id for s in plan.added] == ["192.0.2.10:443/TCP", "192.0.2.10:80/TCP"]
