"""The agent's plan: diffing the applied state against the services of a node view."""

from __future__ import annotations

from weir.common.pb import pb
from weir.nodeagent.plan import AppliedState, ChangeKind, Plan, make_plan
from weir.nodeagent.service import Backend, Service, from_pb


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


def view(*services: pb.Service) -> dict[str, Service]:
    return {s.id: from_pb(s) for s in services}


def applied_from(v: dict[str, Service], seed: int = 7) -> AppliedState:
    plan = make_plan(AppliedState(), seed, v)
    return AppliedState().after(plan, applied=plan.to_apply, removed=plan.removed)


def nothing_to_do(plan: Plan) -> bool:
    return not (plan.seed_changed or plan.added or plan.changed or plan.removed)


def test_first_view_adds_everything_and_sets_seed() -> None:
    v = view(service(port=80), service(port=443))
    plan = make_plan(AppliedState(), 7, v)
    assert [s.id for s in plan.added] == ["192.0.2.10:443/TCP", "192.0.2.10:80/TCP"]
    assert plan.changed == () and plan.removed == () and plan.unchanged == ()
    assert plan.seed == 7 and plan.seed_changed


def test_same_view_again_is_empty() -> None:
    v = view(service(port=80), service(port=443))
    plan = make_plan(applied_from(v), 7, v)
    assert nothing_to_do(plan)
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
    assert nothing_to_do(make_plan(applied_from(a), 7, b))


def test_classifies_backend_changes() -> None:
    old = view(service(backends=[backend("10.0.0.1"), backend("10.0.0.2")]))
    new = view(service(backends=[backend("10.0.0.1"), backend("10.0.0.3")]))
    plan = make_plan(applied_from(old), 7, new)
    (change,) = plan.changed
    assert change.kinds == {ChangeKind.BACKENDS}
    assert change.old is not None
    assert change.old.backends == (Backend("10.0.0.1", 8080), Backend("10.0.0.2", 8080))
    assert change.new.backends == (Backend("10.0.0.1", 8080), Backend("10.0.0.3", 8080))


def test_how_a_backend_is_reached_is_a_backend_change() -> None:
    """The same pod, now reached through its node (or another node): rewritten."""
    encap = {"forwarding": pb.FORWARDING_ENCAP, "node_address": "10.1.0.5"}
    plain = view(service(backends=[backend("10.0.0.1")]))
    pod = view(service(backends=[pb.Backend(address="10.0.0.1", port=8080, **encap)]))
    encap["node_address"] = "10.1.0.6"
    moved = view(service(backends=[pb.Backend(address="10.0.0.1", port=8080, **encap)]))
    for old, new in ((plain, pod), (pod, moved)):
        (change,) = make_plan(applied_from(old), 7, new).changed
        assert change.kinds == {ChangeKind.BACKENDS}


def test_classifies_weights_only() -> None:
    old = view(service(backends=[backend("10.0.0.1"), backend("10.0.0.2")]))
    new = view(service(backends=[backend("10.0.0.1", weight=3), backend("10.0.0.2")]))
    (change,) = make_plan(applied_from(old), 7, new).changed
    assert change.kinds == {ChangeKind.WEIGHTS}
    assert change.new.weights == (3, 1)
    assert change.old is not None
    assert [(b.address, b.port) for b in change.old.backends] == [
        (b.address, b.port) for b in change.new.backends
    ]


def test_classifies_table_size_strategy_and_affinity() -> None:
    old = view(service())
    plan = make_plan(applied_from(old), 7, view(service(table_size=251)))
    assert plan.changed[0].kinds == {ChangeKind.TABLE_SIZE}
    plan = make_plan(applied_from(old), 7, view(service(strategy=pb.STRATEGY_RANDOM)))
    assert plan.changed[0].kinds == {ChangeKind.STRATEGY}
    plan = make_plan(
        applied_from(old),
        7,
        view(service(session_affinity=pb.SESSION_AFFINITY_CLIENT_IP, affinity_timeout_seconds=60)),
    )
    (change,) = plan.changed
    assert change.kinds == {ChangeKind.AFFINITY}


def test_several_kinds_at_once() -> None:
    old = view(service())
    new = view(service(table_size=251, backends=[backend("10.0.0.9")]))
    (change,) = make_plan(applied_from(old), 7, new).changed
    assert change.kinds == {ChangeKind.TABLE_SIZE, ChangeKind.BACKENDS}


def test_removed_and_unchanged() -> None:
    old = view(service(port=80), service(port=443), service(port=8443))
    new = view(service(port=80), service(port=8443, backends=[backend("10.0.0.1")]))
    plan = make_plan(applied_from(old), 7, new)
    assert plan.removed == ("192.0.2.10:443/TCP",)
    assert plan.unchanged == ("192.0.2.10:80/TCP",)
    assert [c.id for c in plan.changed] == ["192.0.2.10:8443/TCP"]
    assert not plan.seed_changed


def test_seed_change_rebuilds_every_maglev_table() -> None:
    # random + ClientIP hashes the client address: its table must follow the seed too,
    # or nodes that built it under different seeds would disagree on a client's backend.
    sticky = service(
        port=82, strategy=pb.STRATEGY_RANDOM, session_affinity=pb.SESSION_AFFINITY_CLIENT_IP
    )
    old = view(service(port=80), service(port=81, strategy=pb.STRATEGY_RANDOM), sticky)
    plan = make_plan(applied_from(old, seed=1), 2, old)
    assert plan.seed_changed and plan.seed == 2
    assert [(c.id, c.kinds) for c in plan.changed] == [
        ("192.0.2.10:80/TCP", {ChangeKind.SEED}),
        ("192.0.2.10:82/TCP", {ChangeKind.SEED}),
    ]
    assert plan.unchanged == ("192.0.2.10:81/TCP",)


def test_adopted_services_are_rederived_or_removed() -> None:
    state = AppliedState.adopted(["192.0.2.10:80/TCP", "192.0.2.99:80/TCP"])
    plan = make_plan(state, 7, view(service(port=80), service(port=81)))
    assert [s.id for s in plan.added] == ["192.0.2.10:81/TCP"]
    (change,) = plan.changed
    assert change.old is None and change.kinds == {ChangeKind.ADOPTED}
    assert plan.removed == ("192.0.2.99:80/TCP",)
    assert plan.seed_changed


def test_failed_services_are_planned_again() -> None:
    v = view(service(port=80), service(port=81))
    plan = make_plan(AppliedState(), 7, v)
    ok = [s for s in plan.to_apply if s.frontend.port == 80]
    state = AppliedState().after(plan, applied=ok, removed=plan.removed)
    again = make_plan(state, 7, v)
    assert [s.id for s in again.added] == ["192.0.2.10:81/TCP"]
    assert again.unchanged == ("192.0.2.10:80/TCP",)


def test_failed_change_keeps_old_spec() -> None:
    old = view(service(backends=[backend("10.0.0.1")]))
    new = view(service(backends=[backend("10.0.0.2")]))
    state = applied_from(old)
    plan = make_plan(state, 7, new)
    state2 = state.after(plan, applied=[], removed=[])
    assert state2.services == state.services
    assert make_plan(state2, 7, new).changed[0].kinds == {ChangeKind.BACKENDS}
