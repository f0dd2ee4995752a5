"""Per-node BGP settings: which peers each node talks to and which VIP prefixes it announces.

Each BGPPeer whose nodeSelector matches a Node gives that node the peer. A node's local ASN and
router id come from its peers and its addresses. Every node with peers announces every VIP that
has at least one usable backend (the agent announces only what its data plane applied). Without
BGPAdvertisement objects every such VIP goes to every peer with no attributes; with them, a VIP
goes to a peer only through an advertisement that selects both, with the union of their
communities, the highest local preference, the lowest MED and the longest AS-path prepend.
Local preference goes to iBGP peers only and AS-path prepending to eBGP peers only (an iBGP
peer would see its own ASN in the path and drop the route): an advertisement asking for
them towards a peer it selects (a peer some node uses) is reported once per peer, whether or
not a VIP goes through it yet, and the route goes without them. A drained node (Node annotation
weir.dev/drain: "true", or drained in memory through weirctl with the file source) keeps its
peers and advertisements with `drain` set: its agent withdraws everything and keeps forwarding.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from weir.common.pb import pb
from weir.controller.core.crds import BGP_ADVERTISEMENT, BGP_PEER, BGPAdvertisement, BGPPeer, IPPool
from weir.controller.core.objects import NODE
from weir.controller.core.state import ClusterInputs

ErrorSink = Callable[[str, str, str, str], None]  # (kind, namespace, name, message)


@dataclass(frozen=True, slots=True)
class AnnouncedVip:
    vip: str
    services: tuple[tuple[str, str, Mapping[str, str]], ...]  # (namespace, name, labels)


def node_configs(
    inputs: ClusterInputs, vips: Sequence[AnnouncedVip], error: ErrorSink
) -> list[pb.NodeBGP]:
    """pb.NodeBGP for every node some valid BGPPeer selects, sorted by node name.

    vips: the VIPs that have at least one usable backend, with the Services behind them.
    """
    peers_of = _peers_by_node(inputs, error)
    ads = _Advertisements(inputs, vips)
    out: list[pb.NodeBGP] = []
    used: dict[str, bool] = {}  # peer name -> eBGP, of the peers some node uses
    for node_name in sorted(peers_of):
        node = inputs.nodes[node_name]
        router_id = node.router_id()
        if not router_id:
            error(NODE, "", node_name, "no IPv4 address for the BGP router id; BGP not set up")
            continue
        chosen = _consistent_peers(node_name, peers_of[node_name], error)
        used.update((p.name, p.ebgp) for p, _ in chosen)
        cfg = pb.BGPConfig(
            local_asn=chosen[0][0].local_asn,
            router_id=router_id,
            peers=[msg for _, msg in chosen],
            advertisements=ads.for_peers(tuple((p.name, p.ebgp) for p, _ in chosen)),
            drain=node.drain or node_name in inputs.drained,
        )
        out.append(pb.NodeBGP(node=node_name, bgp=cfg))
    _check_attributes(inputs, used, error)
    return out


def _check_attributes(inputs: ClusterInputs, used: Mapping[str, bool], error: ErrorSink) -> None:
    """Report the attributes each advertisement asks for that a peer it selects cannot get."""
    for name in sorted(inputs.bgp_advertisements):
        a = inputs.bgp_advertisements[name]
        for peer in sorted(p for p in used if not a.peers or p in a.peers):
            if used[peer] and a.local_pref:
                error(
                    BGP_ADVERTISEMENT,
                    "",
                    name,
                    f"localPref {a.local_pref} applies to iBGP peers only; not sent to the "
                    f"eBGP peer {peer} (use med or asPathPrepend to steer an eBGP peer)",
                )
            if not used[peer] and a.as_path_prepend:
                error(
                    BGP_ADVERTISEMENT,
                    "",
                    name,
                    f"asPathPrepend applies to eBGP peers only; not done towards the iBGP "
                    f"peer {peer}",
                )


def _peers_by_node(
    inputs: ClusterInputs, error: ErrorSink
) -> dict[str, list[tuple[BGPPeer, pb.BGPPeer]]]:
    nodes = sorted(inputs.nodes.values(), key=lambda n: n.name)
    by_node: dict[str, list[tuple[BGPPeer, pb.BGPPeer]]] = {}
    for name in sorted(inputs.bgp_peers):
        peer = inputs.bgp_peers[name]
        matched = [n for n in nodes if peer.node_selector.matches(n.labels)]
        if not matched:
            error(BGP_PEER, "", name, "nodeSelector matches no Node; peer skipped")
            continue
        password = _password(inputs, peer, error)
        if password is None:
            continue
        msg = pb.BGPPeer(
            name=name,
            address=peer.peer_address,
            asn=peer.peer_asn,
            port=peer.port,
            hold_time_seconds=peer.hold_time,
            keepalive_time_seconds=peer.keepalive_time,
            password=password,
            graceful_restart=peer.graceful_restart,
            graceful_restart_time_seconds=peer.restart_time if peer.graceful_restart else 0,
        )
        if peer.bfd is not None:
            msg.bfd.CopyFrom(
                pb.BFD(
                    min_transmit_ms=peer.bfd.transmit_ms,
                    min_receive_ms=peer.bfd.receive_ms,
                    detect_multiplier=peer.bfd.multiplier,
                    required=peer.bfd.required,
                )
            )
        for n in matched:
            by_node.setdefault(n.name, []).append((peer, msg))
    return by_node


def _password(inputs: ClusterInputs, peer: BGPPeer, error: ErrorSink) -> str | None:
    """ "" without a secret reference; None (after reporting why) when it cannot be read."""
    ref = peer.password_secret
    if ref is None:
        return ""
    secret = inputs.secrets.get((ref.namespace, ref.name))
    if secret is None:
        error(BGP_PEER, "", peer.name, f"Secret {ref.namespace}/{ref.name} not found; peer skipped")
        return None
    value = secret.data.get(ref.key)
    if value is None:
        error(
            BGP_PEER,
            "",
            peer.name,
            f"Secret {ref.namespace}/{ref.name} has no key {ref.key!r}; peer skipped",
        )
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        error(BGP_PEER, "", peer.name, f"Secret {ref.namespace}/{ref.name}: password not UTF-8")
        return None


def _consistent_peers(
    node: str, peers: list[tuple[BGPPeer, pb.BGPPeer]], error: ErrorSink
) -> list[tuple[BGPPeer, pb.BGPPeer]]:
    """One local ASN and one session per peer address on a node; the first peer by name sets
    the ASN, and later peers that disagree are left out of this node with an error."""
    first = peers[0][0]
    kept: list[tuple[BGPPeer, pb.BGPPeer]] = []
    addresses: dict[str, str] = {}
    for peer, msg in peers:
        if peer.local_asn != first.local_asn:
            error(
                BGP_PEER,
                "",
                peer.name,
                f"node {node}: localASN {peer.local_asn} differs from {first.local_asn} "
                f"of peer {first.name}; not used on this node",
            )
        elif peer.peer_address in addresses:
            error(
                BGP_PEER,
                "",
                peer.name,
                f"node {node}: peer address {peer.peer_address} is already used by peer "
                f"{addresses[peer.peer_address]}; not used on this node",
            )
        else:
            addresses[peer.peer_address] = peer.name
            kept.append((peer, msg))
    return kept


def prefix_of(vip: str) -> str:
    return f"{vip}/128" if ":" in vip else f"{vip}/32"


@dataclass(frozen=True, slots=True)
class _Attributes:
    communities: tuple[str, ...]
    local_pref: int
    med: int | None
    prepend: int
    sources: tuple[str, ...]  # the BGPAdvertisements merged


class _Advertisements:
    """Advertisement lists, computed once per distinct set of peers."""

    def __init__(self, inputs: ClusterInputs, vips: Sequence[AnnouncedVip]) -> None:
        self._ads = [inputs.bgp_advertisements[n] for n in sorted(inputs.bgp_advertisements)]
        self._pools = [inputs.pools[n] for n in sorted(inputs.pools)]
        self._vips = sorted(vips, key=lambda v: prefix_of(v.vip))
        self._matching: list[list[BGPAdvertisement]] | None = None
        self._by_peers: dict[tuple[tuple[str, bool], ...], list[pb.Advertisement]] = {}

    def for_peers(self, peers: tuple[tuple[str, bool], ...]) -> list[pb.Advertisement]:
        """peers: (name, eBGP) of each peer of a node."""
        cached = self._by_peers.get(peers)
        if cached is None:
            cached = self._by_peers[peers] = self._build(peers)
        return cached

    def _build(self, peers: tuple[tuple[str, bool], ...]) -> list[pb.Advertisement]:
        if not self._ads:
            return [pb.Advertisement(prefix=prefix_of(v.vip)) for v in self._vips]
        if self._matching is None:
            self._matching = [self._select(v) for v in self._vips]
        out: list[pb.Advertisement] = []
        for v, matching in zip(self._vips, self._matching, strict=True):
            groups: dict[_Attributes, list[str]] = {}
            for peer, ebgp in peers:
                chosen = [a for a in matching if not a.peers or peer in a.peers]
                if chosen:
                    groups.setdefault(_merge(chosen, ebgp), []).append(peer)
            for attrs, group in sorted(groups.items(), key=lambda g: g[1]):
                ad = pb.Advertisement(
                    prefix=prefix_of(v.vip),
                    communities=attrs.communities,
                    local_preference=attrs.local_pref,
                    as_path_prepend=attrs.prepend,
                    sources=attrs.sources,
                    peers=[] if len(group) == len(peers) else group,
                )
                if attrs.med is not None:
                    ad.med = attrs.med
                out.append(ad)
        return out

    def _select(self, v: AnnouncedVip) -> list[BGPAdvertisement]:
        addr = ipaddress.ip_address(v.vip)
        pools = [p for p in self._pools if p.contains(addr)]
        return [a for a in self._ads if _selects(a, pools, v)]


def _merge(chosen: list[BGPAdvertisement], ebgp: bool) -> _Attributes:
    meds = [a.med for a in chosen if a.med is not None]
    return _Attributes(
        communities=tuple(sorted({c for a in chosen for c in a.communities})),
        local_pref=0 if ebgp else max(a.local_pref for a in chosen),
        med=min(meds) if meds else None,
        prepend=max(a.as_path_prepend for a in chosen) if ebgp else 0,
        sources=tuple(a.name for a in chosen),
    )


def _selects(ad: BGPAdvertisement, pools: list[IPPool], v: AnnouncedVip) -> bool:
    if ad.pools or ad.pool_selectors:
        if not any(
            p.name in ad.pools or any(s.matches(p.labels) for s in ad.pool_selectors) for p in pools
        ):
            return False
    if ad.service_selectors:
        return any(s.matches(labels) for _, _, labels in v.services for s in ad.service_selectors)
    return True
