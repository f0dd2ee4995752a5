"""Per-node views of the cluster snapshot, and the content hashes that identify them.

Every node gets every service (each load-balancer node forwards every VIP: ECMP may send it any
flow) and only its own BGP settings. The hash scheme (content only, services first, then a
per-node trailer) is common/viewhash.py, shared with the agent; the cluster hash is the same
services digest with ClusterSnapshot(maglev_seed, nodes) as the trailer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
        pb.ClusterSnapshot(maglev_seed=cluster.maglev_seed, nodes=cluster.nodes)
    )
    return viewhash.finish(_services_digest(cluster), trailer)


def node_bgp(cluster: pb.ClusterSnapshot, node: str) -> pb.BGPConfig | None:
    """The node's BGP settings, None when no BGPPeer selects it."""
    for n in cluster.nodes:  # a few entries per load-balancer node: a scan is fine
        if n.node == node:
            return n.bgp
    return None


def node_view_hash(cluster: pb.ClusterSnapshot, node: str) -> str:
    """viewhash.view_hash(node_view(cluster, node)) without building the view: cheap per node."""
    trailer = viewhash.node_trailer(node, cluster.maglev_seed, node_bgp(cluster, node))
    return viewhash.finish(_services_digest(cluster), trailer)


def node_view(cluster: pb.ClusterSnapshot, node: str) -> pb.Snapshot:
    """The node's whole view (version 0, hash set). Copies every service: O(cluster)."""
    view = pb.Snapshot(
        node=node,
        maglev_seed=cluster.maglev_seed,
        services=cluster.services,
        bgp=node_bgp(cluster, node),
    )
    view.hash = node_view_hash(cluster, node)
    return view
