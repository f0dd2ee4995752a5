"""Versioned cluster snapshots, and the per-node messages that bring an agent up to date.

Each published ClusterSnapshot whose content differs from the latest gets version+1; an
unchanged one (a relist, a no-op edit) gets none. A bounded history of versions is kept
so an agent at any retained version gets a Delta to the latest; others get a Snapshot.

What a node sees is its own BGP settings and NodeConfig, plus every service when it is a
load-balancer node (see core/views.py). The store keeps each version as canonical bytes
(common.viewhash.encode) so it can:
- hash a node's view from parts: services digest once per version, BGP and NodeConfig per
  node;
- compute the services part of a delta once per (base, target) for all load-balancer nodes;
- build a node's message by concatenating pre-encoded parts, never re-serializing the
  services for each of hundreds of agents. Protobuf's wire format allows this: a message
  is the concatenation of its encoded fields, in any order.
A node whose load-balancer role changed between its base and the latest version gets a full
snapshot: it gains or loses every service at once.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import Message
from weir.common import viewhash
from weir.common.aio import Generation
from weir.common.pb import pb

DEFAULT_HISTORY = 64
_MAX_TRAILERS = 16384


def _number(message: type[Message], name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


_SNAPSHOT_SERVICES = _number(pb.Snapshot, "services")
_SNAPSHOT_BGP = _number(pb.Snapshot, "bgp")
_SNAPSHOT_NODE_CONFIG = _number(pb.Snapshot, "node_config")
_DELTA_UPSERTED = _number(pb.Delta, "upserted")
_DELTA_REMOVED = _number(pb.Delta, "removed")
_DELTA_BGP = _number(pb.Delta, "bgp")
_DELTA_NODE_CONFIG = _number(pb.Delta, "node_config")
_NO_SERVICES = viewhash.combine(())  # the services digest of a view without services
_MESSAGE_SNAPSHOT = _number(pb.ControllerMessage, "snapshot")
_MESSAGE_DELTA = _number(pb.ControllerMessage, "delta")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _prefix(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited field (wire type 2) of length bytes."""
    return _varint(number << 3 | 2) + _varint(length)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: embedded message, string or bytes."""
    return _prefix(number, len(payload)) + payload


@dataclasses.dataclass(frozen=True)
class Version:
    """One retained version, as canonical bytes (shared with older versions when equal)."""

    version: int
    content: str  # the cluster hash (views.cluster_hash): dedupes unchanged ones
    maglev_seed: int
    services: Mapping[str, bytes]  # service id -> encoded pb.Service, in id order
    digests: Mapping[str, bytes]  # service id -> common.viewhash.service_digest
    services_digest: Any  # common.viewhash.combine of the digests
    bgp: Mapping[str, bytes]  # node -> encoded pb.BGPConfig (absent: no BGP)
    configs: Mapping[str, bytes]  # node -> encoded pb.NodeConfig (absent: empty)
    load_balancers: frozenset[str]  # the nodes whose views carry the services
    hashes: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def bgp_of(self, node: str) -> bytes:
        return self.bgp.get(node, b"")

    def config_of(self, node: str) -> bytes:
        return self.configs.get(node, b"")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A cluster snapshot encoded for commit(); built off the event loop if heavy."""

    cluster: pb.ClusterSnapshot
    entry: Version  # version 0 until committed


def prepare(cluster: pb.ClusterSnapshot, previous: Version | None) -> Prepared:
    """Encode a cluster snapshot; pure, so it may run in a thread."""
    old = previous.services if previous else {}
    old_digests = previous.digests if previous else {}
    services: dict[str, bytes] = {}
    digests: dict[str, bytes] = {}
    for svc in sorted(cluster.services, key=lambda s: s.id):
        sid = svc.id
        data = viewhash.encode(svc)
        prior = old.get(sid)
        if prior == data:
            # Unchanged: share the older version's objects (history costs no memory).
            services[sid], digests[sid] = prior, old_digests[sid]
        else:
            services[sid], digests[sid] = data, viewhash.service_digest(data)
    bgp = {n.node: viewhash.encode(n.bgp) for n in cluster.nodes}
    bgp = {node: data for node, data in bgp.items() if data}
    configs = _configs(cluster, previous.configs if previous else {})
    load_balancers = frozenset(v.node for v in cluster.node_views if v.config.load_balancer)
    if previous is not None and previous.load_balancers == load_balancers:
        load_balancers = previous.load_balancers
    digest = viewhash.combine(list(digests.values()))
    trailer = viewhash.encode(
        pb.ClusterSnapshot(
            maglev_seed=cluster.maglev_seed, nodes=cluster.nodes, node_views=cluster.node_views
        )
    )
    content = viewhash.finish(digest, trailer)
    entry = Version(
        0, content, cluster.maglev_seed, services, digests, digest, bgp, configs, load_balancers
    )
    return Prepared(cluster, entry)


def _configs(cluster: pb.ClusterSnapshot, old: Mapping[str, bytes]) -> Mapping[str, bytes]:
    """Every node's encoded NodeConfig, sharing the older version's bytes (and the whole
    mapping) where nothing changed: thousands of nodes cost no memory per version."""
    configs: dict[str, bytes] = {}
    for v in cluster.node_views:
        data = viewhash.encode(v.config)
        if data:
            prior = old.get(v.node)
            configs[v.node] = prior if prior == data else data
    return old if configs == old else configs


class SnapshotStore:
    """The versioned history; single-threaded (event loop) apart from prepare()."""

    def __init__(self, history: int = DEFAULT_HISTORY, delta_cache: int = 256) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self._history = history
        self._versions: OrderedDict[int, Version] = OrderedDict()
        self._cluster: pb.ClusterSnapshot | None = None
        self._deltas: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._delta_cache = delta_cache
        self._full_services: tuple[int, bytes] | None = None
        self._trailers: dict[str, tuple[tuple[int, bytes, bytes], bytes]] = {}
        self._listeners: list[Callable[[int], None]] = []
        self._version = Generation()  # counts the versions: its value is the latest

    @property
    def version(self) -> int:
        """The latest version (0 before the first publish)."""
        return self._version.value

    @property
    def latest(self) -> Version | None:
        return self._versions[self.version] if self._versions else None

    def cluster(self) -> pb.ClusterSnapshot | None:
        """The latest cluster snapshot, version set (do not modify)."""
        return self._cluster

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """Call callback(version) synchronously after each new version."""
        self._listeners.append(callback)

    async def wait_published(self) -> int:
        """Wait until a first version exists."""
        return await self.wait_newer(0)

    async def wait_newer(self, version: int) -> int:
        """Wait until the latest version is newer than version; returns it."""
        return await self._version.wait_past(version)

    def prepare(self, cluster: pb.ClusterSnapshot) -> Prepared:
        return prepare(cluster, self.latest)

    def publish(self, cluster: pb.ClusterSnapshot) -> int:
        """Prepare and commit on the calling thread; returns the (maybe unchanged) version.

        The store keeps the message (and sets its version and hash): do not modify it after.
        """
        return self.commit(self.prepare(cluster))

    def commit(self, prepared: Prepared) -> int:
        """Make prepared the latest version unless its content is unchanged."""
        latest = self.latest
        if latest is not None and latest.content == prepared.entry.content:
            return latest.version
        version = self.version + 1
        self._versions[version] = dataclasses.replace(prepared.entry, version=version, hashes={})
        self._version.bump()
        while len(self._versions) > self._history:
            self._versions.popitem(last=False)
        # The store owns the published message: stamping the version changes no hash.
        cluster = prepared.cluster
        cluster.version = version
        cluster.hash = prepared.entry.content
        self._cluster = cluster
        for callback in self._listeners:
            callback(version)
        return version

    def node_hash(self, node: str, version: int) -> str | None:
        """The hash of node's view at version, None when that version is not retained."""
        entry = self._versions.get(version)
        return self._hash(entry, node) if entry else None

    def _hash(self, entry: Version, node: str) -> str:
        digest = entry.hashes.get(node)
        if digest is not None:
            return digest
        bgp = entry.bgp_of(node)
        config = entry.config_of(node)
        services = entry.services_digest if node in entry.load_balancers else _NO_SERVICES
        if not bgp and not config:
            # A node Weir knows nothing of, under whatever name a request carries: its hash is
            # cheap (a trailer of a few bytes), so nothing is kept for it.
            trailer = viewhash.node_trailer(node, entry.maglev_seed, None, None)
            return viewhash.finish(services, trailer)
        # A node's trailer rarely changes between versions: keep the last one per node.
        key = (entry.maglev_seed, bgp, config)
        cached = self._trailers.get(node)
        if cached is None or cached[0] != key:
            trailer = viewhash.node_trailer(
                node,
                key[0],
                pb.BGPConfig.FromString(bgp) if bgp else None,
                pb.NodeConfig.FromString(config) if config else None,
            )
            cached = self._trailers[node] = (key, trailer)
            while len(self._trailers) > _MAX_TRAILERS:
                del self._trailers[next(iter(self._trailers))]
        digest = entry.hashes[node] = viewhash.finish(services, cached[1])
        return digest

    def message(self, node: str, base: int) -> tuple[int, bytes, bool]:
        """An encoded ControllerMessage bringing node from base (0: nothing) to the latest.

        A Delta when base is retained and the node's load-balancer role is the same in both,
        else a full Snapshot. Returns (version, bytes, full). The caller checks that the agent
        really holds base (see node_hash).
        """
        version, parts, full = self.message_parts(node, base)
        return version, b"".join(parts), full

    def message_parts(self, node: str, base: int) -> tuple[int, list[bytes], bool]:
        """message() as parts that join into it. The bulk (the services) is one bytes object
        shared by every node's message of that version, so a caller can size a message, and
        wait until it may hold it, before building it."""
        latest = self.latest
        if latest is None:
            raise LookupError("no snapshot published yet")
        old = self._versions.get(base) if base else None
        if old is None or (node in old.load_balancers) != (node in latest.load_balancers):
            return latest.version, self._snapshot_parts(node, latest), True
        return latest.version, self._delta_parts(node, old, latest), False

    def node_snapshot(self, node: str) -> pb.Snapshot:
        """Node's full view at the latest version."""
        _, data, _ = self.message(node, 0)
        return pb.ControllerMessage.FromString(data).snapshot

    def _snapshot_parts(self, node: str, entry: Version) -> list[bytes]:
        head = pb.Snapshot(
            version=entry.version,
            hash=self._hash(entry, node),
            node=node,
            maglev_seed=entry.maglev_seed,
        ).SerializeToString()
        bgp = entry.bgp_of(node)
        if bgp:
            head += _field(_SNAPSHOT_BGP, bgp)
        config = entry.config_of(node)
        if config:
            head += _field(_SNAPSHOT_NODE_CONFIG, config)
        services = self._services_part(entry) if node in entry.load_balancers else b""
        return [_prefix(_MESSAGE_SNAPSHOT, len(head) + len(services)), head, services]

    def _services_part(self, entry: Version) -> bytes:
        if self._full_services is None or self._full_services[0] != entry.version:
            parts = [
                _field(_SNAPSHOT_SERVICES, entry.services[sid]) for sid in sorted(entry.services)
            ]
            self._full_services = (entry.version, b"".join(parts))
        return self._full_services[1]

    def _delta_parts(self, node: str, old: Version, new: Version) -> list[bytes]:
        bgp = new.bgp_of(node)
        bgp_changed = bgp != old.bgp_of(node)
        config = new.config_of(node)
        config_changed = config != old.config_of(node)
        head = pb.Delta(
            version=new.version,
            base_version=old.version,
            hash=self._hash(new, node),
            bgp_changed=bgp_changed,
            maglev_seed=new.maglev_seed,
            node_config_changed=config_changed,
        ).SerializeToString()
        if bgp_changed and bgp:
            head += _field(_DELTA_BGP, bgp)
        if config_changed and config:
            head += _field(_DELTA_NODE_CONFIG, config)
        # (a node whose role changed gets a snapshot: message_parts)
        services = self._delta_services(old, new) if node in new.load_balancers else b""
        return [_prefix(_MESSAGE_DELTA, len(head) + len(services)), head, services]

    def _delta_services(self, old: Version, new: Version) -> bytes:
        """The upserted and removed fields of a delta, computed once for all nodes."""
        key = (old.version, new.version)
        cached = self._deltas.get(key)
        if cached is not None:
            self._deltas.move_to_end(key)
            return cached
        parts = []
        for sid in sorted(new.services):
            data = new.services[sid]
            prior = old.services.get(sid)
            if prior is not data and prior != data:
                parts.append(_field(_DELTA_UPSERTED, data))
        for sid in sorted(old.services.keys() - new.services.keys()):
            parts.append(_field(_DELTA_REMOVED, sid.encode()))
        data = b"".join(parts)
        self._deltas[key] = data
        while len(self._deltas) > self._delta_cache:
            self._deltas.popitem(last=False)
        return data
