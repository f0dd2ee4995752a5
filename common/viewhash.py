"""The content hash of a node's view, shared by the controller and the agent.

Hashes (sha256 hex) cover content only, never versions or the hash field itself:

    view_hash    = sha256(u32be(n) + d(service_1) + ... + d(service_n) + trailer)
    d(s)         = sha256(encode(s)), services in id order
    trailer      = encode(Snapshot(node, maglev_seed, bgp when not empty,
                                   node_config when not empty))

Services come first so their digest is computed once per cluster version and each node's
hash costs only its trailer. Per-service digests make a delta cheap to verify: the agent
keeps d(s) of every service and hashes only the services a delta changed, plus 32 bytes per
service. An empty BGPConfig or NodeConfig counts as absent, so a view rebuilt from deltas
hashes like the original. A view without services (a node without the load-balancer role)
has n = 0. The cluster hash (controller.views.cluster_hash) is the same services digest with
ClusterSnapshot(maglev_seed, nodes, node_views) as the trailer.

encode() is protobuf's deterministic serialization, canonical for this schema (no maps).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

from weir.common.pb import pb


def encode(message: Any) -> bytes:
    """The canonical bytes of a message (a Service: the unit of hashes and deltas)."""
    return message.SerializeToString(deterministic=True)


def service_digest(encoded: bytes) -> bytes:
    """d(s) of one service, given its encode()."""
    return hashlib.sha256(encoded).digest()


def combine(digests: Collection[bytes]) -> Any:
    """A sha256 object fed with the services part, given every d(s) in id order."""
    h = hashlib.sha256(len(digests).to_bytes(4, "big"))
    h.update(b"".join(digests))
    return h


def services_digest(encoded: Collection[bytes]) -> Any:
    """A sha256 object fed with the services part, given every encode(s) in id order."""
    return combine([service_digest(b) for b in encoded])


def node_trailer(
    node: str,
    maglev_seed: int,
    bgp: pb.BGPConfig | None,
    node_config: pb.NodeConfig | None,
) -> bytes:
    """The per-node part of a view's hash; None and empty messages are the same."""
    if bgp is not None and bgp.ByteSize() == 0:
        bgp = None
    if node_config is not None and node_config.ByteSize() == 0:
        node_config = None
    return encode(pb.Snapshot(node=node, maglev_seed=maglev_seed, bgp=bgp, node_config=node_config))


def finish(digest: Any, trailer: bytes) -> str:
    """The hash from a services digest (left untouched) and a trailer."""
    h = digest.copy()
    h.update(trailer)
    return h.hexdigest()


def view_hash(view: pb.Snapshot) -> str:
    """sha256 hex of a node view's content (version, base_version and hash not covered)."""
    digest = services_digest([encode(s) for s in view.services])
    return finish(digest, node_trailer(view.node, view.maglev_seed, view.bgp, view.node_config))
