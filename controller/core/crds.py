"""Weir's own kinds (weir.dev/v1alpha1 custom resources) and their parsers.

LoadBalancerIPPool, BGPPeer and BGPAdvertisement are cluster-scoped, like Nodes: their
namespace is always "". Their spec fields are documented on each class. Parsers raise
ParseError with a message naming the bad field, as those of the built-in kinds do
(controller/core/objects.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from weir.common import communities
from weir.controller.core.parsing import (
    NOT_VIPS,
    ParseError,
    boolean,
    canonical_ip,
    integer,
    mapping,
    metadata,
    seconds,
    sequence,
    string,
)
from weir.controller.core.selectors import MATCH_ALL, LabelSelector, parse_selector, parse_selectors

API_VERSION = "weir.dev/v1alpha1"
IP_POOL = "LoadBalancerIPPool"
BGP_PEER = "BGPPeer"
BGP_ADVERTISEMENT = "BGPAdvertisement"
KINDS = frozenset((IP_POOL, BGP_PEER, BGP_ADVERTISEMENT))

MAX_ASN = 4294967294  # 4294967295 is reserved (RFC 7300)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class IPPool:
    """LoadBalancerIPPool. spec:
    cidrs: ["192.0.2.0/28", "2001:db8::/124"]
    ranges: [{start: "192.0.2.100", end: "192.0.2.110"}]   (inclusive)
    autoAssign: true          (false: only Services asking for an address get one)
    avoidBuggyIPs: false      (true: skip addresses ending in .0 and .255)
    namespaces: [names]       (optional; Services in these namespaces only)
    namespaceSelector: {matchLabels, matchExpressions}   (optional; on namespace labels)
    serviceSelector: {matchLabels, matchExpressions}     (optional; on Service labels)
    """

    name: str
    labels: Mapping[str, str]
    cidrs: tuple[IPNetwork, ...]
    ranges: tuple[tuple[IPAddress, IPAddress], ...]
    auto_assign: bool
    avoid_buggy_ips: bool
    namespaces: tuple[str, ...]
    namespace_selector: LabelSelector | None
    service_selector: LabelSelector | None
    generation: int  # metadata.generation: moves with every spec change
    status: Mapping[str, Any]  # as read: the allocator compares it with what it would write
    # What the allocator's finalizer works from (a pool in use is deleted only once unused):
    resource_version: str = ""
    finalizers: tuple[str, ...] = ()
    deleting: bool = False  # deletionTimestamp set

    def contains(self, ip: str | IPAddress) -> bool:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if any(addr in net for net in self.cidrs):
            return True
        return any(
            start.version == addr.version and int(start) <= int(addr) <= int(end)
            for start, end in self.ranges
        )

    def selects(
        self,
        namespace: str,
        labels: Mapping[str, str],
        namespace_labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Whether the pool may give addresses to a Service of this namespace and labels.

        namespace_labels: the labels of the Service's Namespace; when unknown, only the
        well-known `kubernetes.io/metadata.name` label is assumed.
        """
        if self.namespaces and namespace not in self.namespaces:
            return False
        if self.namespace_selector is not None:
            if namespace_labels is None:
                namespace_labels = {"kubernetes.io/metadata.name": namespace}
            if not self.namespace_selector.matches(namespace_labels):
                return False
        return self.service_selector is None or self.service_selector.matches(labels)


def parse_ip_pool(obj: Mapping[str, Any]) -> IPPool:
    meta = metadata(obj, namespaced=False, api_version=API_VERSION)
    spec = mapping(obj.get("spec"), "spec")
    cidrs: list[IPNetwork] = []
    for i, c in enumerate(sequence(spec.get("cidrs"), "spec.cidrs")):
        try:
            cidrs.append(ipaddress.ip_network(string(c, f"spec.cidrs[{i}]", required=True)))
        except ValueError as e:
            raise ParseError(f"spec.cidrs[{i}]: {e}") from None
    ranges: list[tuple[IPAddress, IPAddress]] = []
    for i, r in enumerate(sequence(spec.get("ranges"), "spec.ranges")):
        path = f"spec.ranges[{i}]"
        r = mapping(r, path)
        start = ipaddress.ip_address(canonical_ip(r.get("start"), f"{path}.start")[0])
        end = ipaddress.ip_address(canonical_ip(r.get("end"), f"{path}.end")[0])
        if start.version != end.version:
            raise ParseError(f"{path}: start and end are of different IP families")
        if int(start) > int(end):
            raise ParseError(f"{path}: start {start} is after end {end}")
        ranges.append((start, end))
    if not cidrs and not ranges:
        raise ParseError("spec: needs at least one of cidrs or ranges")
    for i, net in enumerate(cidrs):
        _no_special_addresses(net[0], net[-1], f"spec.cidrs[{i}]")
    for i, (start, end) in enumerate(ranges):
        _no_special_addresses(start, end, f"spec.ranges[{i}]")
    ns_sel = spec.get("namespaceSelector")
    svc_sel = spec.get("serviceSelector")
    namespaces = sequence(spec.get("namespaces"), "spec.namespaces")
    if not all(isinstance(n, str) and n for n in namespaces):
        raise ParseError("spec.namespaces: must be namespace names")
    return IPPool(
        name=meta.name,
        labels=meta.labels,
        cidrs=tuple(cidrs),
        ranges=tuple(ranges),
        auto_assign=boolean(spec.get("autoAssign"), "spec.autoAssign", default=True),
        avoid_buggy_ips=boolean(spec.get("avoidBuggyIPs"), "spec.avoidBuggyIPs", default=False),
        namespaces=tuple(namespaces),
        namespace_selector=None
        if ns_sel is None
        else parse_selector(ns_sel, "spec.namespaceSelector"),
        service_selector=None
        if svc_sel is None
        else parse_selector(svc_sel, "spec.serviceSelector"),
        generation=meta.generation,
        status=MappingProxyType(dict(mapping(obj.get("status"), "status"))),
        resource_version=meta.resource_version,
        finalizers=meta.finalizers,
        deleting=meta.deleting,
    )


def _no_special_addresses(first: IPAddress, last: IPAddress, path: str) -> None:
    """ParseError when [first, last] holds an address that cannot be a VIP (NOT_VIPS)."""
    for net, what in NOT_VIPS:
        if net.version == first.version and int(first) <= int(net[-1]) and int(net[0]) <= int(last):
            raise ParseError(f"{path}: includes {what} addresses ({net}), which cannot be VIPs")


# ---------------------------------------------------------------------------------------------
# weir.dev/v1alpha1: BGPPeer and BGPAdvertisement


@dataclass(frozen=True, slots=True)
class SecretRef:
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class BGPPeer:
    """BGPPeer. spec:
    peerAddress: "192.0.2.1"          (required)
    peerASN: 65000                    (required, 1..4294967294)
    localASN: 65001                   (required, 1..4294967294)
    port: 179
    holdTime: 90                      (seconds, or a duration like "90s"; 0 or 3..65535)
    keepaliveTime: 30                 (default holdTime / 3; not above holdTime)
    nodeSelector: {matchLabels, matchExpressions}   (default: every Node)
    passwordSecretRef: {namespace, name, key}       (key defaults to "password")
    gracefulRestart: {enabled: true, restartTime: 120}   (restartTime 1..4095 s)
    bfd: {transmitInterval: 300, receiveInterval: 300, detectMultiplier: 3, required: false}
        (milliseconds, 10..60000; multiplier 2..255; `bfd: {}` is BFD with these defaults;
        required: announce nothing to the peer unless its BFD session is up)
    """

    name: str
    peer_address: str
    peer_asn: int
    local_asn: int
    port: int
    hold_time: int
    keepalive_time: int
    node_selector: LabelSelector
    password_secret: SecretRef | None
    graceful_restart: bool
    restart_time: int
    bfd: BFDProfile | None = None

    @property
    def ebgp(self) -> bool:
        return self.peer_asn != self.local_asn


@dataclass(frozen=True, slots=True)
class BFDProfile:
    transmit_ms: int
    receive_ms: int
    multiplier: int
    required: bool


def _bfd(raw: Any) -> BFDProfile | None:
    if raw is None:
        return None
    spec = mapping(raw, "spec.bfd")
    if not boolean(spec.get("enabled"), "spec.bfd.enabled", default=True):
        return None
    return BFDProfile(
        transmit_ms=integer(
            spec.get("transmitInterval"), "spec.bfd.transmitInterval", 10, 60000, default=300
        ),
        receive_ms=integer(
            spec.get("receiveInterval"), "spec.bfd.receiveInterval", 10, 60000, default=300
        ),
        multiplier=integer(
            spec.get("detectMultiplier"), "spec.bfd.detectMultiplier", 2, 255, default=3
        ),
        required=boolean(spec.get("required"), "spec.bfd.required", default=False),
    )


def parse_bgp_peer(obj: Mapping[str, Any]) -> BGPPeer:
    meta = metadata(obj, namespaced=False, api_version=API_VERSION)
    spec = mapping(obj.get("spec"), "spec")
    address = canonical_ip(spec.get("peerAddress"), "spec.peerAddress")[0]
    hold = seconds(spec.get("holdTime"), "spec.holdTime", 0, 65535, default=90)
    if 0 < hold < 3:
        raise ParseError(f"spec.holdTime: {hold} must be 0 or at least 3 seconds (RFC 4271)")
    keepalive = seconds(
        spec.get("keepaliveTime"), "spec.keepaliveTime", 0, 65535, default=hold // 3
    )
    if keepalive > hold:
        raise ParseError(f"spec.keepaliveTime: {keepalive} is above holdTime {hold}")
    sel = spec.get("nodeSelector")
    ref = None
    if spec.get("passwordSecretRef") is not None:
        raw = mapping(spec.get("passwordSecretRef"), "spec.passwordSecretRef")
        ref = SecretRef(
            namespace=string(
                raw.get("namespace"), "spec.passwordSecretRef.namespace", required=True
            ),
            name=string(raw.get("name"), "spec.passwordSecretRef.name", required=True),
            key=string(raw.get("key"), "spec.passwordSecretRef.key") or "password",
        )
    gr = mapping(spec.get("gracefulRestart"), "spec.gracefulRestart")
    return BGPPeer(
        name=meta.name,
        peer_address=address,
        peer_asn=integer(spec.get("peerASN"), "spec.peerASN", 1, MAX_ASN),
        local_asn=integer(spec.get("localASN"), "spec.localASN", 1, MAX_ASN),
        port=integer(spec.get("port"), "spec.port", 1, 65535, default=179),
        hold_time=hold,
        keepalive_time=keepalive,
        node_selector=MATCH_ALL if sel is None else parse_selector(sel, "spec.nodeSelector"),
        password_secret=ref,
        graceful_restart=boolean(
            gr.get("enabled"), "spec.gracefulRestart.enabled", default=bool(gr)
        ),
        restart_time=seconds(
            gr.get("restartTime"), "spec.gracefulRestart.restartTime", 1, 4095, default=120
        ),
        bfd=_bfd(spec.get("bfd")),
    )


@dataclass(frozen=True)
class BGPAdvertisement:
    """BGPAdvertisement: which VIPs to announce, and with which attributes. spec:
    ipAddressPools: [pool names]              (both empty: VIPs of any pool, or of none)
    ipAddressPoolSelectors: [label selectors] (on LoadBalancerIPPool labels)
    serviceSelectors: [label selectors]       (empty: any Service)
    communities: ["65000:100", "65000:1:2", "no-export"]   (weir.common.communities)
    localPref: 100                            (0: unset; iBGP peers only)
    med: 50                                   (MULTI_EXIT_DISC; unset: not sent)
    asPathPrepend: 2                          (times the local ASN is prepended, 0..10;
                                               eBGP peers only)
    peers: [BGPPeer names]                    (empty: every peer of the node)
    """

    name: str
    pools: tuple[str, ...]
    pool_selectors: tuple[LabelSelector, ...]
    service_selectors: tuple[LabelSelector, ...]
    communities: tuple[str, ...]  # canonical (weir.common.communities), sorted, deduplicated
    local_pref: int
    peers: tuple[str, ...]
    med: int | None = None
    as_path_prepend: int = 0
    # What its status is about: the spec generation, of this very object (not one of the
    # same name deleted before).
    generation: int = 0
    uid: str = ""


MAX_PREPEND = 10


def parse_bgp_advertisement(obj: Mapping[str, Any]) -> BGPAdvertisement:
    meta = metadata(obj, namespaced=False, api_version=API_VERSION)
    spec = mapping(obj.get("spec"), "spec")
    communities = sorted(
        {
            _community(c, f"spec.communities[{i}]")
            for i, c in enumerate(sequence(spec.get("communities"), "spec.communities"))
        }
    )
    return BGPAdvertisement(
        name=meta.name,
        pools=_names(spec.get("ipAddressPools"), "spec.ipAddressPools"),
        pool_selectors=parse_selectors(
            spec.get("ipAddressPoolSelectors"), "spec.ipAddressPoolSelectors"
        ),
        service_selectors=parse_selectors(spec.get("serviceSelectors"), "spec.serviceSelectors"),
        communities=tuple(communities),
        local_pref=integer(spec.get("localPref"), "spec.localPref", 0, 2**32 - 1, default=0),
        peers=_names(spec.get("peers"), "spec.peers"),
        med=None if spec.get("med") is None else integer(spec.get("med"), "spec.med", 0, 2**32 - 1),
        as_path_prepend=integer(
            spec.get("asPathPrepend"), "spec.asPathPrepend", 0, MAX_PREPEND, default=0
        ),
        generation=meta.generation,
        uid=meta.uid,
    )


def _community(value: Any, path: str) -> str:
    try:
        return communities.parse(string(value, path, required=True)).text
    except ValueError as e:
        raise ParseError(f"{path}: {e}") from None


def _names(raw: Any, path: str) -> tuple[str, ...]:
    names = sequence(raw, path)
    if not all(isinstance(n, str) and n for n in names):
        raise ParseError(f"{path}: must be a list of names")
    return tuple(sorted(set(names)))
