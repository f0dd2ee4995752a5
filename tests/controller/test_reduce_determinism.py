"""Determinism: the same cluster gives a byte-identical snapshot and hash, whatever the order
objects arrived in, however often they were re-listed; no-op changes leave the hash alone."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from weir.common.pb import pb
from weir.common.viewhash import view_hash
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.reduce import ReduceResult, reduce
from weir.controller.core.state import ClusterState
from weir.controller.core.views import node_view, node_view_hash

from tests.controller.reduce_support import (
    FILES,
    LB,
    endpoint_slice,
    node,
    peer,
    service,
    state_of,
    weir,
)
from tests.kube.builders import secret

VIPS = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
PORTS = [("http", 80, "TCP"), ("dns", 53, "UDP"), ("alt", 8080, "TCP")]
V4 = ["10.0.0.1", "10.0.0.2", "10.0.0.10", "10.0.1.1"]
V6 = ["fd00::1", "fd00::2", "fd00::a"]
CONDITION = st.sampled_from([True, False, None])


@st.composite
def clusters(draw: st.DrawFn) -> list[Any]:
    """A small cluster with conflicts, shared VIPs, odd endpoints, BGP and some bad objects;
    every object has its own (kind, namespace, name)."""
    objs: list[Any] = []
    for i in range(draw(st.integers(0, 5))):
        ns = draw(st.sampled_from(["a", "b"]))
        name = f"s{i}"
        ports = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3, unique=True))
        objs.append(
            service(
                name,
                ns,
                ips=draw(st.lists(st.sampled_from(VIPS), max_size=2, unique=True)),
                ports=ports,
                created=draw(st.sampled_from([None, "2024-01-01T00:00:00Z", "2024-02-01T00:00Z"])),
                labels={"app": draw(st.sampled_from(["web", "db"]))},
                annotations=draw(
                    st.sampled_from(
                        [
                            {},
                            {"weir.dev/traffic-strategy": "random"},
                            {"weir.dev/maglev-table-size": "251"},
                            {"weir.dev/maglev-table-size": "252"},  # not prime: an error
                            {"weir.dev/forwarding": "encap"},
                            {"weir.dev/forwarding": "l2"},
                            {"weir.dev/forwarding": "bogus"},  # an error, then auto
                        ]
                    )
                ),
            )
        )
        for j in range(draw(st.integers(0, 2))):
            family = draw(st.sampled_from(["IPv4", "IPv6"]))
            addresses = V4 if family == "IPv4" else V6
            eps = draw(
                st.lists(
                    st.tuples(st.sampled_from(addresses), CONDITION, CONDITION, CONDITION),
                    max_size=5,
                )
            )
            # Pods translate the port (+8000) or not (hosts for L2 DSR), on nodes that exist
            # or not.
            shift = draw(st.sampled_from([0, 8000]))
            slice_ports = [(n, p + shift, proto) for n, p, proto in ports]
            on = draw(st.sampled_from(["n0", "n1", "n2", "gone", None]))
            objs.append(
                endpoint_slice(
                    f"{name}-{j}", name, eps, ns=ns, ports=slice_ports, family=family, node=on
                )
            )
    for i in range(draw(st.integers(0, 3))):
        labels = draw(st.sampled_from([{}, {"lb": "yes"}, LB, {**LB, "lb": "yes"}]))
        objs.append(node(f"n{i}", draw(st.sampled_from(["172.16.0.1", "172.16.0.2", None])),
                         **labels))  # fmt: skip
    for i in range(draw(st.integers(0, 3))):
        spec: dict[str, Any] = {}
        if draw(st.booleans()):
            spec["nodeSelector"] = {"matchLabels": {"lb": "yes"}}
        if draw(st.booleans()):
            spec["passwordSecretRef"] = {"namespace": "weir", "name": "bgp"}
        objs.append(
            peer(
                f"p{i}",
                address=draw(st.sampled_from(["172.16.0.254", "172.16.0.253", "bad"])),
                asn=draw(st.sampled_from([64512, 0])),
                local=draw(st.sampled_from([64513, 64514])),
                **spec,
            )
        )
    if draw(st.booleans()):
        objs.append(secret("bgp", "weir", password="s3cret"))
    for i in range(draw(st.integers(0, 2))):
        objs.append(
            weir(
                "BGPAdvertisement",
                f"ad{i}",
                {
                    "communities": draw(st.sampled_from([[], ["65000:1"], ["65000:2", "1:2:3"]])),
                    "localPref": draw(st.sampled_from([0, 100, 200])),
                    "peers": draw(st.sampled_from([[], ["p0"], ["p1", "p2"]])),
                    "serviceSelectors": draw(
                        st.sampled_from([[], [{"matchLabels": {"app": "web"}}]])
                    ),
                },
            )
        )
    if draw(st.booleans()):
        objs.append(weir("LoadBalancerIPPool", "pool", {"cidrs": ["192.0.2.0/30"]}))
    if draw(st.booleans()):
        objs += [
            {"kind": "Service", "metadata": {"name": "broken"}, "spec": {"ports": "x"}},
            {"kind": "EndpointSlice", "metadata": {"name": "broken"}, "addressType": "IPX"},
            "garbage",
        ]
    return objs


def signature(result: ReduceResult, state: ClusterState) -> tuple[bytes, str, list, list]:
    return (
        result.cluster.SerializeToString(deterministic=True),
        result.cluster.hash,
        [e.SerializeToString() for e in result.errors],
        [e.SerializeToString() for e in state.errors()],
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), objs=clusters())
def test_any_arrival_order_and_relists_give_identical_snapshots(
    data: st.DataObject, objs: list[Any]
) -> None:
    listed = state_of(objs)
    expected = signature(reduce(listed.inputs(), FILES), listed)

    # The same objects as a stream of watch events in another order, some delivered twice,
    # with a relist in yet another order at the end.
    shuffled = data.draw(st.permutations(objs))
    repeats = data.draw(st.lists(st.sampled_from(objs), max_size=6)) if objs else []
    watched = ClusterState()
    watched.replace(ALL_KINDS, [])
    for obj in [*shuffled, *repeats]:
        watched.upsert(copy.deepcopy(obj))
    assert signature(reduce(watched.inputs(), FILES), watched) == expected

    generation = watched.generation
    watched.replace(ALL_KINDS, data.draw(st.permutations(objs)))
    assert watched.generation == generation, "a relist of the same objects is no change"
    assert signature(reduce(watched.inputs(), FILES), watched) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=clusters())
def test_no_op_changes_keep_the_hash(objs: list[Any]) -> None:
    state = state_of(objs)
    before = reduce(state.inputs(), FILES).cluster
    noisy = copy.deepcopy(objs)
    for obj in noisy:
        if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
            meta = obj["metadata"]
            meta["resourceVersion"] = "12345"
            meta["managedFields"] = [{"manager": "kubectl"}]
            if obj["kind"] == "Service":
                meta.setdefault("annotations", {})["example.com/owner"] = "team-a"
            if obj["kind"] == "EndpointSlice":
                meta.setdefault("labels", {})["endpointslice.kubernetes.io/managed-by"] = (
                    "controller"
                )
    state.replace(ALL_KINDS, noisy)
    after = reduce(state.inputs(), FILES).cluster
    assert after.hash == before.hash
    assert after.SerializeToString() == before.SerializeToString()


def test_a_real_change_changes_the_hash() -> None:
    objs = [service("web"), endpoint_slice("web-1", "web", ["10.0.0.1", "10.0.0.2"])]
    state = state_of(objs)
    first = reduce(state.inputs(), FILES).cluster.hash
    generation = state.generation
    state.upsert(endpoint_slice("web-1", "web", ["10.0.0.1", ("10.0.0.2", False, True, True)]))
    assert state.generation == generation + 1
    assert reduce(state.inputs(), FILES).cluster.hash != first


def test_state_generation_and_wait_changed() -> None:
    import asyncio

    async def scenario() -> None:
        state = ClusterState()
        assert state.generation == 0 and state.listed_kinds == frozenset()
        waiter = asyncio.create_task(state.wait_changed(0))
        state.replace(ALL_KINDS, [])  # first list: the state is now complete, even if empty
        assert await asyncio.wait_for(waiter, 1) == 1
        assert state.listed_kinds == ALL_KINDS
        state.replace(ALL_KINDS, [])
        state.upsert(service("web"))
        state.upsert(service("web"))
        state.delete("Service", "default", "nope")
        assert state.generation == 2
        assert await asyncio.wait_for(state.wait_changed(1), 1) == 2
        inputs = state.inputs()
        assert inputs is state.inputs()  # cached until the next change
        state.delete("Service", "default", "web")
        assert state.inputs() is not inputs and len(inputs.services) == 1  # old view intact

    asyncio.run(scenario())


def test_changes_of_some_kinds_and_unparsed_objects() -> None:
    state = ClusterState()
    services = state.changes_of(frozenset({"Service"}))
    state.replace(ALL_KINDS, [])
    assert services.value == 1  # the first list of Services
    state.upsert(endpoint_slice("web-1", "web", ["10.0.0.1"]))
    state.upsert(node("lb-1", "172.16.0.1"))
    assert services.value == 1 and state.generation == 3
    bad = service("bad", ports=[("http", 0, "TCP")])
    state.upsert(bad)
    assert services.value == 2 and state.unparsed("Service") == [bad]
    assert [e.name for e in state.errors()] == ["bad"]
    state.delete("Service", "default", "bad")
    assert services.value == 3 and state.unparsed("Service") == []


def test_views_and_hashes() -> None:
    lb = {"weir.dev/load-balancer": "true", "lb": "yes"}
    objs = [
        service("web"),
        endpoint_slice("web-1", "web", ["10.0.0.1"]),
        node("lb-1", "172.16.0.1", **lb),
        node("lb-2", "172.16.0.2", **lb),
        node("lb-3", "172.16.0.4", **{"weir.dev/load-balancer": "true"}),  # no BGPPeer
        node("worker", "172.16.0.3"),
        peer("tor", nodeSelector={"matchLabels": {"lb": "yes"}}),
    ]
    cluster = reduce(state_of(objs).inputs(), FILES).cluster
    names = ("lb-1", "lb-2", "lb-3", "worker", "unknown")
    views = {n: node_view(cluster, n) for n in names}
    for name, view in views.items():
        assert view.node == name and view.version == 0 and view.base_version == 0
        # Only load-balancer nodes' views carry the services.
        lb_node = name.startswith("lb-")
        assert list(view.services) == (list(cluster.services) if lb_node else [])
        assert view.node_config.load_balancer == lb_node
        assert view.hash == view_hash(view) == node_view_hash(cluster, name)
    assert views["lb-1"].bgp.router_id == "172.16.0.1"
    assert not views["worker"].HasField("bgp")
    assert views["worker"].node_config == pb.NodeConfig(address="172.16.0.3")
    assert not views["unknown"].HasField("node_config")
    assert len({v.hash for v in views.values()}) == 5  # the node name is content too
    # Versions and the hash field are not content; an empty bgp or node_config set
    # explicitly is none.
    rebuilt = pb.Snapshot()
    rebuilt.CopyFrom(views["lb-3"])
    rebuilt.version, rebuilt.base_version, rebuilt.hash = 9, 8, "x"
    rebuilt.bgp.CopyFrom(pb.BGPConfig())
    assert rebuilt.HasField("bgp") and view_hash(rebuilt) == views["lb-3"].hash
    rebuilt.services[0].backends[0].weight = 2
    assert view_hash(rebuilt) != views["lb-3"].hash
    unknown = pb.Snapshot()
    unknown.CopyFrom(views["unknown"])
    unknown.node_config.CopyFrom(pb.NodeConfig())
    assert unknown.HasField("node_config") and view_hash(unknown) == views["unknown"].hash
    # The hash covers the NodeConfig: the same view with another address is another view.
    moved = pb.Snapshot()
    moved.CopyFrom(views["worker"])
    moved.node_config.address = "172.16.0.9"
    assert view_hash(moved) != views["worker"].hash
    # The cluster hash ignores the version the caller stamps.
    before = cluster.hash
    cluster.version = 41
    assert reduce(state_of(objs).inputs(), FILES).cluster.hash == before
