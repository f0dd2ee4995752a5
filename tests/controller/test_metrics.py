"""The controller's per-pool and per-node series: set, replaced, and removed with their subject."""

from __future__ import annotations

from weir.controller.kube.ipam import PoolUsage
from weir.controller.metrics import Metrics


def test_pool_usage_follows_the_pools() -> None:
    m = Metrics()
    m.set_pools({"a": PoolUsage(assigned_v4=3, available_v4=5), "b": PoolUsage(available_v6=9)})
    get = m.registry.get_sample_value
    assert get("weir_ipam_pool_assigned_addresses", {"pool": "a", "family": "IPv4"}) == 3
    assert get("weir_ipam_pool_available_addresses", {"pool": "a", "family": "IPv4"}) == 5
    assert get("weir_ipam_pool_available_addresses", {"pool": "b", "family": "IPv6"}) == 9
    m.set_pools({"b": PoolUsage(assigned_v6=1, available_v6=8)})
    assert get("weir_ipam_pool_assigned_addresses", {"pool": "a", "family": "IPv4"}) is None
    assert get("weir_ipam_pool_assigned_addresses", {"pool": "b", "family": "IPv6"}) == 1


def test_a_forgotten_node_leaves_no_series() -> None:
    m = Metrics()
    m.agent_connected.labels("n1").set(1)
    m.agent_nacks.labels("n1").inc()
    m.set_bgp_sessions("n1", {"tor": True}, {"tor": True})
    m.forget_agent("n1")
    m.forget_agent("n2")  # never seen
    names = {s.name for f in m.registry.collect() for s in f.samples if "node" in s.labels}
    assert names == set()


def test_bfd_sessions_only_for_peers_that_run_bfd() -> None:
    m = Metrics()
    get = m.registry.get_sample_value
    m.set_bgp_sessions("n1", {"tor-a": True, "tor-b": True}, {"tor-a": False})
    assert get("weir_bfd_session_up", {"node": "n1", "peer": "tor-a"}) == 0
    assert get("weir_bfd_session_up", {"node": "n1", "peer": "tor-b"}) is None
    m.set_bgp_sessions("n1", {"tor-a": True}, {})  # BFD taken off the peer
    assert get("weir_bfd_session_up", {"node": "n1", "peer": "tor-a"}) is None
