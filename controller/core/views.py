"""Per-node views of the cluster snapshot, and the content hashes that identify them.

A load-balancer node's view carries every service (each one forwards every VIP: ECMP may send
it any flow); any other node's carries none. Every view carries the node's own BGP settings and
NodeConfig (controller/core/nodeconfig.py). The hash scheme (content only, services first,
then a per-node trailer) is common/viewhash.py, shared with the agent; the cluster hash is the
same services digest with ClusterSnapshot(maglev_seed, nodes, node_views) as the trailer.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from weir.common import viewhash
from weir.common.pb import pb

# Services digests of the last few clusters, keyed by id and checked by identity: every node's
# hash of one cluster reuses it. Clusters are not mutated after reduce (only their version is
# stamped, which no hash covers). reduce() may run in a thread, hence the lock.
_CACHE_SIZE = 4
_digests: OrderedDict[int, tuple[pb.ClusterSnapshot, Any]] = OrderedDict()
_lock = threading.Lock()


def _services_digest(cluster: pb.ClusterSnapshot) -> Any:
    with _lock:
        hit = _digests.get(id(cluster))
        if hit is not None and hit[0] is cluster:
            return hit[1]
    digest = viewhash.services_digest([viewhash.encode(s) for s in cluster.services])
    with _lock:
        _digests[id(cluster)] = (cluster, digest)
        while len(_digests) > _CACHE_SIZE:
            _digests.popitem(last=False)
    return digest


def cluster_hash(cluster: pb.ClusterSnapshot) -> str:
    """sha256 hex of the cluster snapshot's content (version and hash fields excluded)."""
    trailer = viewhash.encode(
        pb.ClusterSnapshot(
            maglev_seed=cluster.maglev_seed, nodes=cluster.nodes, node_views=cluster.node_views
        )
    )
    return viewhash.finish(_services_digest(cluster), trailer)


def _by_node(entries: Sequence[Any], node: str) -> Any | None:
    """The entry for node in a list sorted by node (NodeBGP, NodeView), None when absent."""
    i = bisect.bisect_left(entries, node, key=lambda e: e.node)
    return entries[i] if i < len(entries) and entries[i].node == node else None


def node_bgp(cluster: pb.ClusterSnapshot, node: str) -> pb.BGPConfig | None:
    """The node's BGP settings, None when no BGPPeer selects it."""
    entry = _by_node(cluster.nodes, node)
    return entry.bgp if entry else None


def node_config(cluster: pb.ClusterSnapshot, node: str) -> pb.NodeConfig | None:
    """The node's NodeConfig, None for a node the cluster has no Node for."""
    entry = _by_node(cluster.node_views, node)
    return entry.config if entry else None


def _load_balancer(config: pb.NodeConfig | None) -> bool:
    return config is not None and config.load_balancer


def node_view_hash(cluster: pb.ClusterSnapshot, node: str) -> str:
    """viewhash.view_hash(node_view(cluster, node)) without building the view: cheap per node."""
    config = node_config(cluster, node)
    if _load_balancer(config):
        digest = _services_digest(cluster)
    else:
        digest = viewhash.services_digest(())
    trailer = viewhash.node_trailer(node, cluster.maglev_seed, node_bgp(cluster, node), config)
    return viewhash.finish(digest, trailer)


def node_view(cluster: pb.ClusterSnapshot, node: str) -> pb.Snapshot:
    """The node's whole view (version 0, hash set). A load-balancer node's copies every
    service: O(cluster)."""
    config = node_config(cluster, node)
    view = pb.Snapshot(
        node=node,
        maglev_seed=cluster.maglev_seed,
        services=cluster.services if _load_balancer(config) else (),
        bgp=node_bgp(cluster, node),
        node_config=config,
    )
    view.hash = node_view_hash(cluster, node)
    return view
