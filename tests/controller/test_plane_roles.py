"""SnapshotStore with node roles: what each node's message carries when pods move, a node
changes role or address; views rebuilt by the agent's client match the controller's."""

from __future__ import annotations

from typing import Any

from weir.common import viewhash
from weir.common.pb import pb
from weir.controller.core.snapshots import SnapshotStore
from weir.controller.core.views import node_view
from weir.nodeagent.controller_client import NodeView, apply_message

from tests.controller.reduce_support import LB, endpoint_slice, node, run, service

NODES = ["lb-1", "lb-2", "w1", "w2", "w3"]


def cluster_objects(
    pods: dict[str, list[str]], lb: tuple[str, ...] = ("lb-1", "lb-2"), **addresses: str
) -> list[Any]:
    """web (port 80 -> 8080) with pods by node; w1..w3 are plain nodes unless in lb."""
    default = {"lb-1": "10.0.0.11", "lb-2": "10.0.0.12", "w1": "10.0.1.1", "w2": "10.0.1.2"}
    default["w3"] = "10.0.1.3"
    default.update(addresses)
    objs: list[Any] = [service("web")]
    objs += [endpoint_slice(f"web-{n}", "web", ips, node=n) for n, ips in pods.items()]
    objs += [node(n, ip, **(LB if n in lb else {})) for n, ip in default.items()]
    return objs


class Agents:
    """Every node's view as the agent's client rebuilds it from the store's messages."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.views: dict[str, NodeView] = {}

    def publish(self, objs: list[Any]) -> dict[str, pb.ControllerMessage]:
        """Publish, bring every node up to date; the message each node got, by node."""
        cluster = run(objs).cluster
        self.store.publish(cluster)
        sent = {}
        for n in NODES:
            base = self.views[n].version if n in self.views else 0
            _, data, _ = self.store.message(n, base)
            sent[n] = msg = pb.ControllerMessage.FromString(data)
            self.views[n] = apply_message(self.views.get(n), n, msg).view
            expected = node_view(cluster, n)
            expected.version = self.store.version
            assert self.views[n].snapshot() == expected == self.store.node_snapshot(n)
            assert self.views[n].hash == viewhash.view_hash(expected)
        return sent


def test_an_endpoint_moving_between_nodes() -> None:
    agents = Agents(SnapshotStore())
    first = agents.publish(cluster_objects({"w1": ["10.244.1.10"], "w2": ["10.244.2.10"]}))
    assert all(m.HasField("snapshot") for m in first.values())
    assert [len(first[n].snapshot.services) for n in NODES] == [1, 1, 0, 0, 0]
    # The pod of w2 is rescheduled on w3 with a new address.
    sent = agents.publish(cluster_objects({"w1": ["10.244.1.10"], "w3": ["10.244.3.10"]}))
    deltas = {n: m.delta for n, m in sent.items()}
    assert all(m.HasField("delta") for m in sent.values())
    for lb in ("lb-1", "lb-2"):
        (web,) = deltas[lb].upserted
        assert [(b.address, b.node_address) for b in web.backends] == [
            ("10.244.1.10", "10.0.1.1"),
            ("10.244.3.10", "10.0.1.3"),
        ]
        assert not deltas[lb].node_config_changed
    # w1 is unchanged; w2 lost its endpoint, w3 gained one. None of them gets services.
    assert not deltas["w1"].node_config_changed and not deltas["w1"].HasField("node_config")
    assert deltas["w2"].node_config_changed
    assert deltas["w2"].node_config == pb.NodeConfig(address="10.0.1.2")
    assert deltas["w3"].node_config_changed
    assert [e.address for e in deltas["w3"].node_config.local_endpoints] == ["10.244.3.10"]
    assert deltas["w3"].node_config.lb_node_addresses == ["10.0.0.11", "10.0.0.12"]
    for n in ("w1", "w2", "w3"):
        assert not deltas[n].upserted and not deltas[n].removed


def test_a_node_that_changes_role_gets_a_full_snapshot() -> None:
    agents = Agents(SnapshotStore())
    pods = {"w1": ["10.244.1.10"]}
    agents.publish(cluster_objects(pods))
    sent = agents.publish(cluster_objects(pods, lb=("lb-1", "lb-2", "w2")))
    assert sent["w2"].HasField("snapshot")
    assert [s.id for s in sent["w2"].snapshot.services] == ["192.0.2.1:80/TCP"]
    assert sent["w2"].snapshot.node_config.load_balancer
    # The others' role did not change: deltas; w1 now accepts packets from w2 too.
    assert all(sent[n].HasField("delta") for n in NODES if n != "w2")
    assert sent["w1"].delta.node_config.lb_node_addresses == ["10.0.0.11", "10.0.0.12", "10.0.1.2"]
    # And back: the services go with the role.
    sent = agents.publish(cluster_objects(pods))
    assert sent["w2"].HasField("snapshot") and not sent["w2"].snapshot.services
    assert not sent["w2"].snapshot.node_config.load_balancer


def test_a_node_address_change_reaches_the_lb_nodes_and_the_backends() -> None:
    agents = Agents(SnapshotStore())
    pods = {"w1": ["10.244.1.10"], "w2": ["10.244.2.10"]}
    agents.publish(cluster_objects(pods))
    sent = agents.publish(cluster_objects(pods, w1="10.0.1.101"))
    deltas = {n: m.delta for n, m in sent.items()}
    (web,) = deltas["lb-1"].upserted
    assert [b.node_address for b in web.backends] == ["10.0.1.101", "10.0.1.2"]
    assert deltas["w1"].node_config.address == "10.0.1.101"
    assert not deltas["w2"].node_config_changed
    # An LB node's new address is a new accepted source on every backend node.
    sent = agents.publish(cluster_objects(pods, w1="10.0.1.101", **{"lb-2": "10.0.0.2"}))
    deltas = {n: m.delta for n, m in sent.items()}
    assert deltas["lb-2"].node_config.address == "10.0.0.2"
    assert not deltas["lb-2"].upserted  # the services did not change
    for n in ("w1", "w2"):
        assert deltas[n].node_config.lb_node_addresses == ["10.0.0.2", "10.0.0.11"]


def test_views_of_other_nodes_stay_small() -> None:
    # 200 frontends: a node without the load-balancer role gets none of them, in its full
    # snapshot and in its deltas.
    objs: list[Any] = []
    for i in range(200):
        objs.append(service(f"s{i}", ips=[f"192.0.2.{i % 250}"], ports=[("http", 1000 + i, "TCP")]))
        objs.append(endpoint_slice(f"s{i}-1", f"s{i}", [f"10.244.{i}.10"], node="w1"))
    objs += cluster_objects({})[1:]
    store = SnapshotStore()
    v1 = store.publish(run(objs).cluster)
    full = {n: len(store.message(n, 0)[1]) for n in NODES}
    assert full["lb-1"] > 200 * 100 and full["w2"] < 100
    assert full["w1"] < 200 * 70  # its 200 local endpoints, no services
    objs.append(endpoint_slice("s0-2", "s0", ["10.244.0.11"], node="w3"))
    store.publish(run(objs).cluster)
    delta = {n: len(store.message(n, v1)[1]) for n in NODES}
    assert delta["w1"] < 100 and delta["w2"] < 100  # the version, the hash: nothing changed
    assert delta["w3"] < 200
