"""Typed Kubernetes objects Weir reads, and their parsers.

Each `parse_*` function takes a Kubernetes JSON-shaped mapping and returns a frozen object, or
raises ParseError with a message naming the bad field. Two kinds of trouble are told apart:

- ParseError: the object cannot be understood (no name, a port out of range, a malformed
  selector). The state keeps an ObjectError for it and leaves the object out.
- `problems` (Service, EndpointSlice): the object is usable for Kubernetes but a Weir-specific
  part is wrong (a bad `weir.dev/...` annotation, one endpoint with a bad address). The object is
  kept, so IPAM and the reducer can report the problem only when the object concerns Weir.

The weir.dev kinds (LoadBalancerIPPool, BGPPeer, BGPAdvertisement) are cluster-scoped, like
Nodes: their namespace is always "". Their spec fields are documented on each class.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from weir.common.tablesize import validate_table_size
from weir.controller.core.parsing import (
    EMPTY_MAP,
    ParseError,
    boolean,
    canonical_ip,
    integer,
    mapping,
    seconds,
    sequence,
    string,
    string_map,
)
from weir.controller.core.selectors import MATCH_ALL, LabelSelector, parse_selector, parse_selectors

WEIR_API_VERSION = "weir.dev/v1alpha1"
LOAD_BALANCER_CLASS = "weir.dev/maglev"
ANN_TRAFFIC_STRATEGY = "weir.dev/traffic-strategy"
ANN_LOAD_BALANCER_IPS = "weir.dev/load-balancer-ips"
ANN_SHARING_KEY = "weir.dev/sharing-key"
ANN_MAGLEV_TABLE_SIZE = "weir.dev/maglev-table-size"
ANN_DRAIN = "weir.dev/drain"  # on a Node: "true" withdraws its routes (weirctl node drain)
LABEL_SERVICE_NAME = "kubernetes.io/service-name"

SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
NODE = "Node"
SECRET = "Secret"
IP_POOL = "LoadBalancerIPPool"
BGP_PEER = "BGPPeer"
BGP_ADVERTISEMENT = "BGPAdvertisement"
ALL_KINDS = frozenset((SERVICE, ENDPOINT_SLICE, NODE, SECRET, IP_POOL, BGP_PEER, BGP_ADVERTISEMENT))
CLUSTER_SCOPED = frozenset((NODE, IP_POOL, BGP_PEER, BGP_ADVERTISEMENT))
WEIR_KINDS = frozenset((IP_POOL, BGP_PEER, BGP_ADVERTISEMENT))

PROTOCOLS = ("TCP", "UDP", "SCTP")
STRATEGIES = ("maglev", "random")
MAX_ASN = 4294967294  # 4294967295 is reserved (RFC 7300)
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default for ClientIP affinity


class ObjectRef(NamedTuple):
    kind: str
    namespace: str
    name: str


# ---------------------------------------------------------------------------------------------
# Service


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: str  # TCP, UDP or SCTP


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    uid: str
    created: datetime | None  # metadata.creationTimestamp (None in hand-written files)
    type: str  # ClusterIP, NodePort, LoadBalancer, ExternalName
    load_balancer_class: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    ports: tuple[ServicePort, ...]
    session_affinity: str  # "None" or "ClientIP"
    affinity_timeout: int  # seconds; meaningful with ClientIP
    traffic_strategy: str | None  # weir.dev/traffic-strategy when set: maglev or random
    # weir.dev/load-balancer-ips (canonical), else the deprecated spec.loadBalancerIP.
    requested_ips: tuple[str, ...]
    sharing_key: str | None  # weir.dev/sharing-key
    maglev_table_size: int | None  # weir.dev/maglev-table-size, validated
    ingress_ips: tuple[str, ...]  # status.loadBalancer.ingress[].ip (canonical)
    problems: tuple[str, ...] = ()  # bad weir.dev annotations or status; see module doc

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def strategy(self) -> str:
        return self.traffic_strategy or "maglev"

    def handled_by_weir(self, default_class: bool) -> bool:
        """Type LoadBalancer, and our class, or no class but our annotation (or the default).

        A Service that names another implementation's class is never ours.
        """
        if self.type != "LoadBalancer":
            return False
        if self.load_balancer_class is not None:
            return self.load_balancer_class == LOAD_BALANCER_CLASS
        return default_class or ANN_TRAFFIC_STRATEGY in self.annotations

    def age_key(self) -> tuple[int, datetime, str, str]:
        """Oldest first; objects without a timestamp after all others; then namespace/name."""
        if self.created is None:
            return (1, _EPOCH, self.namespace, self.name)
        return (0, self.created, self.namespace, self.name)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_service(obj: Mapping[str, Any]) -> Service:
    meta = _metadata(obj, namespaced=True)
    spec = mapping(obj.get("spec"), "spec")
    status = mapping(obj.get("status"), "status")
    ports = _service_ports(spec.get("ports"))
    affinity = string(spec.get("sessionAffinity"), "spec.sessionAffinity") or "None"
    if affinity not in ("None", "ClientIP"):
        raise ParseError(f"spec.sessionAffinity: {affinity!r} is not None or ClientIP")
    cfg = mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
    client_ip = mapping(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    timeout = integer(
        client_ip.get("timeoutSeconds"),
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        1,
        86400,
        default=DEFAULT_AFFINITY_TIMEOUT,
    )
    lb_class = string(spec.get("loadBalancerClass"), "spec.loadBalancerClass") or None
    ann = meta.annotations
    problems: list[str] = []

    strategy = ann.get(ANN_TRAFFIC_STRATEGY)
    if strategy is not None and strategy not in STRATEGIES:
        problems.append(f"annotation {ANN_TRAFFIC_STRATEGY}: {strategy!r} is not maglev or random")
        strategy = None

    table_size: int | None = None
    if ANN_MAGLEV_TABLE_SIZE in ann:
        try:
            table_size = integer(ann[ANN_MAGLEV_TABLE_SIZE], ANN_MAGLEV_TABLE_SIZE, 1, 2**31)
            validate_table_size(table_size)
        except ValueError as e:  # ParseError is a ValueError too
            problems.append(f"annotation {ANN_MAGLEV_TABLE_SIZE}: {e}")
            table_size = None

    requested: list[str] = []
    if ANN_LOAD_BALANCER_IPS in ann:
        raw = [p.strip() for p in ann[ANN_LOAD_BALANCER_IPS].split(",") if p.strip()]
        requested = _ips(raw, f"annotation {ANN_LOAD_BALANCER_IPS}", problems)
    else:
        legacy = string(spec.get("loadBalancerIP"), "spec.loadBalancerIP")
        if legacy:
            requested = _ips([legacy], "spec.loadBalancerIP", problems)

    lb_status = mapping(status.get("loadBalancer"), "status.loadBalancer")
    ingress_raw: list[Any] = []
    for i, ing in enumerate(sequence(lb_status.get("ingress"), "status.loadBalancer.ingress")):
        ip = mapping(ing, f"status.loadBalancer.ingress[{i}]").get("ip")
        if ip is not None:  # hostname-only entries are not ours
            ingress_raw.append(ip)
    ingress = _ips(ingress_raw, "status.loadBalancer.ingress", problems)

    return Service(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        created=meta.created,
        type=string(spec.get("type"), "spec.type") or "ClusterIP",
        load_balancer_class=lb_class,
        labels=meta.labels,
        annotations=ann,
        ports=ports,
        session_affinity=affinity,
        affinity_timeout=timeout,
        traffic_strategy=strategy,
        requested_ips=tuple(requested),
        sharing_key=ann.get(ANN_SHARING_KEY) or None,
        maglev_table_size=table_size,
        ingress_ips=tuple(ingress),
        problems=tuple(problems),
    )


def _service_ports(raw: Any) -> tuple[ServicePort, ...]:
    ports: list[ServicePort] = []
    seen: set[tuple[int, str]] = set()
    names: set[str] = set()
    for i, p in enumerate(sequence(raw, "spec.ports")):
        path = f"spec.ports[{i}]"
        p = mapping(p, path)
        port = integer(p.get("port"), f"{path}.port", 1, 65535)
        proto = string(p.get("protocol"), f"{path}.protocol") or "TCP"
        if proto not in PROTOCOLS:
            raise ParseError(f"{path}.protocol: {proto!r} is not TCP, UDP or SCTP")
        name = string(p.get("name"), f"{path}.name")
        if (port, proto) in seen:
            raise ParseError(f"{path}: port {port}/{proto} is listed twice")
        if name in names:
            raise ParseError(f"{path}.name: {name!r} is used twice")
        seen.add((port, proto))
        names.add(name)
        ports.append(ServicePort(name, port, proto))
    return tuple(ports)


def _ips(raw: list[Any], path: str, problems: list[str]) -> list[str]:
    """Canonical IPs, deduplicated in order; bad entries become problems."""
    out: list[str] = []
    for value in raw:
        try:
            ip = canonical_ip(value, path)[0]
        except ParseError as e:
            problems.append(str(e))
            continue
        if ip not in out:
            out.append(ip)
    return out


# ---------------------------------------------------------------------------------------------
# EndpointSlice


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    port: int
    protocol: str


class Endpoint(NamedTuple):
    """One endpoint of a slice (a NamedTuple: slices hold many and parse must be quick)."""

    sort_key: bytes  # packed address: sorts numerically
    address: str  # the first address, canonical (consumers use only the first)
    node: str
    ready: bool  # KEP-1669 conditions, with the API's defaults for unset ones
    serving: bool
    terminating: bool
    weight: int  # Weir extension for files: endpoints[].weight, default 1


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name; "" when the slice has none
    address_type: str  # IPv4, IPv6 or FQDN (FQDN slices carry no endpoints for us)
    ports: tuple[SlicePort, ...]
    endpoints: tuple[Endpoint, ...]  # sorted by address
    problems: tuple[str, ...] = ()  # endpoints left out, and why
    # Derived from endpoints once, so reduce stays cheap: ready and not terminating; and
    # serving and terminating (the KEP-1669 fallback).
    usable: tuple[Endpoint, ...] = field(init=False, compare=False, repr=False)
    fallback: tuple[Endpoint, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        eps = self.endpoints
        object.__setattr__(self, "usable", tuple(e for e in eps if e.ready and not e.terminating))
        object.__setattr__(self, "fallback", tuple(e for e in eps if e.serving and e.terminating))

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


_FAMILIES = {"IPv4": socket.AF_INET, "IPv6": socket.AF_INET6}


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    meta = _metadata(obj, namespaced=True)
    address_type = string(obj.get("addressType"), "addressType", required=True)
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise ParseError(f"addressType: {address_type!r} is not IPv4, IPv6 or FQDN")
    ports: list[SlicePort] = []
    for i, p in enumerate(sequence(obj.get("ports"), "ports")):
        path = f"ports[{i}]"
        p = mapping(p, path)
        if p.get("port") is None:  # "all ports": not usable by a port-based balancer
            continue
        proto = string(p.get("protocol"), f"{path}.protocol") or "TCP"
        if proto not in PROTOCOLS:
            raise ParseError(f"{path}.protocol: {proto!r} is not TCP, UDP or SCTP")
        ports.append(
            SlicePort(
                string(p.get("name"), f"{path}.name"),
                integer(p.get("port"), f"{path}.port", 1, 65535),
                proto,
            )
        )
    problems: list[str] = []
    endpoints: list[Endpoint] = []
    family = _FAMILIES.get(address_type)
    if family is not None:
        endpoints = _endpoints(obj.get("endpoints"), family, problems)
    eps = _sorted_unique(endpoints, problems)
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service_name=meta.labels.get(LABEL_SERVICE_NAME, ""),
        address_type=address_type,
        ports=tuple(ports),
        endpoints=eps,
        problems=tuple(problems),
    )


def _endpoints(raw: Any, family: int, problems: list[str]) -> list[Endpoint]:
    # The hot loop of parsing (a big cluster has hundreds of thousands of endpoints): plain
    # dict access, one try per endpoint, and a bad endpoint skips only itself.
    out: list[Endpoint] = []
    pton, ntop, v6 = socket.inet_pton, socket.inet_ntop, family == socket.AF_INET6
    for i, ep in enumerate(sequence(raw, "endpoints")):
        try:
            addrs = ep["addresses"]
            if not isinstance(addrs, list | tuple) or not addrs:
                raise ParseError("addresses: needs at least one address")
            address = addrs[0]
            try:
                packed = pton(family, address)
            except (OSError, TypeError):
                raise ParseError(
                    f"addresses[0]: {address!r} is not an {_FAMILY_NAMES[family]} address"
                ) from None
            if v6:
                address = ntop(family, packed)
            cond = ep.get("conditions") or EMPTY_MAP
            ready = cond.get("ready")
            serving = cond.get("serving")
            terminating = cond.get("terminating")
            if not (_is_opt_bool(ready) and _is_opt_bool(serving) and _is_opt_bool(terminating)):
                raise ParseError("conditions: ready, serving and terminating must be booleans")
            node = ep.get("nodeName") or ""
            if not isinstance(node, str):
                raise ParseError("nodeName: expected a string")
            weight = ep.get("weight")
            weight = 1 if weight is None else integer(weight, "weight", 1, 65535)
            # Unset conditions: ready and serving default to true, terminating to false.
            out.append(
                Endpoint(
                    packed,
                    address,
                    node,
                    ready is not False,
                    serving is not False,
                    terminating is True,
                    weight,
                )
            )
        except ParseError as e:
            problems.append(f"endpoints[{i}]: {e}; endpoint skipped")
        except (KeyError, TypeError, AttributeError):
            problems.append(f"endpoints[{i}]: not an endpoint object with addresses; skipped")
    return out


def _sorted_unique(endpoints: list[Endpoint], problems: list[str]) -> tuple[Endpoint, ...]:
    """Sorted by address, one endpoint per address (the first in sort order when repeated)."""
    endpoints.sort()
    out: list[Endpoint] = []
    for e in endpoints:
        if out and out[-1].sort_key == e.sort_key:
            problems.append(f"endpoints: address {e.address} is listed twice; one is used")
            continue
        out.append(e)
    return tuple(out)


_FAMILY_NAMES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


def _is_opt_bool(v: Any) -> bool:
    return v is None or v is True or v is False


# ---------------------------------------------------------------------------------------------
# Node and Secret


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str  # InternalIP, ExternalIP, Hostname, ...
    address: str


@dataclass(frozen=True)
class Node:
    name: str
    labels: Mapping[str, str]
    addresses: tuple[NodeAddress, ...]
    drain: bool = False  # annotation weir.dev/drain: "true"

    def router_id(self) -> str:
        """The BGP router id: the first IPv4 InternalIP, else the first IPv4 of any type."""
        v4 = [a for a in self.addresses if _is_ipv4(a.address)]
        for a in v4:
            if a.type == "InternalIP":
                return a.address
        return v4[0].address if v4 else ""


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return False
    return True


def parse_node(obj: Mapping[str, Any]) -> Node:
    meta = _metadata(obj, namespaced=False)
    status = mapping(obj.get("status"), "status")
    addrs: list[NodeAddress] = []
    for i, a in enumerate(sequence(status.get("addresses"), "status.addresses")):
        a = mapping(a, f"status.addresses[{i}]")
        addrs.append(
            NodeAddress(
                string(a.get("type"), f"status.addresses[{i}].type", required=True),
                string(a.get("address"), f"status.addresses[{i}].address", required=True),
            )
        )
    drain = meta.annotations.get(ANN_DRAIN, "").strip().lower() == "true"
    return Node(name=meta.name, labels=meta.labels, addresses=tuple(addrs), drain=drain)


@dataclass(frozen=True)
class Secret:
    namespace: str
    name: str
    data: Mapping[str, bytes]  # data (base64-decoded), overlaid with stringData

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def parse_secret(obj: Mapping[str, Any]) -> Secret:
    meta = _metadata(obj, namespaced=True)
    data: dict[str, bytes] = {}
    for k, v in mapping(obj.get("data"), "data").items():
        try:
            data[str(k)] = base64.b64decode(string(v, f"data.{k}"), validate=True)
        except binascii.Error:
            raise ParseError(f"data.{k}: not valid base64") from None
    for k, v in mapping(obj.get("stringData"), "stringData").items():
        data[str(k)] = string(v, f"stringData.{k}").encode()
    return Secret(namespace=meta.namespace, name=meta.name, data=data)


# ---------------------------------------------------------------------------------------------
# weir.dev/v1alpha1: LoadBalancerIPPool


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

    def contains(self, ip: str | IPAddress) -> bool:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if any(addr in net for net in self.cidrs):
            return True
        return any(
            start.version == addr.version and start <= addr <= end for start, end in self.ranges
        )

    def selects(self, svc: Service, namespace_labels: Mapping[str, str] | None = None) -> bool:
        """Whether the pool may give addresses to this Service.

        namespace_labels: the labels of the Service's Namespace; when unknown, only the
        well-known `kubernetes.io/metadata.name` label is assumed.
        """
        if self.namespaces and svc.namespace not in self.namespaces:
            return False
        if self.namespace_selector is not None:
            labels = namespace_labels
            if labels is None:
                labels = {"kubernetes.io/metadata.name": svc.namespace}
            if not self.namespace_selector.matches(labels):
                return False
        return self.service_selector is None or self.service_selector.matches(svc.labels)


def parse_ip_pool(obj: Mapping[str, Any]) -> IPPool:
    meta = _metadata(obj, namespaced=False, weir=True)
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
        if start > end:
            raise ParseError(f"{path}: start {start} is after end {end}")
        ranges.append((start, end))
    if not cidrs and not ranges:
        raise ParseError("spec: needs at least one of cidrs or ranges")
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
    )


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


def parse_bgp_peer(obj: Mapping[str, Any]) -> BGPPeer:
    meta = _metadata(obj, namespaced=False, weir=True)
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
    )


@dataclass(frozen=True)
class BGPAdvertisement:
    """BGPAdvertisement: which VIPs to announce, and with which attributes. spec:
    ipAddressPools: [pool names]              (both empty: VIPs of any pool, or of none)
    ipAddressPoolSelectors: [label selectors] (on LoadBalancerIPPool labels)
    serviceSelectors: [label selectors]       (empty: any Service)
    communities: ["65000:100", "65000:1:2", "no-export"]
    localPref: 100                            (0: unset)
    peers: [BGPPeer names]                    (empty: every peer of the node)
    """

    name: str
    pools: tuple[str, ...]
    pool_selectors: tuple[LabelSelector, ...]
    service_selectors: tuple[LabelSelector, ...]
    communities: tuple[str, ...]  # sorted, deduplicated
    local_pref: int
    peers: tuple[str, ...]


WELL_KNOWN_COMMUNITIES = frozenset(
    ("no-export", "no-advertise", "no-export-subconfed", "no-peer", "blackhole")
)


def parse_bgp_advertisement(obj: Mapping[str, Any]) -> BGPAdvertisement:
    meta = _metadata(obj, namespaced=False, weir=True)
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
    )


def _community(value: Any, path: str) -> str:
    """Standard (ASN:value, 16 bits each) or large (three 32-bit parts) community."""
    text = string(value, path, required=True).strip().lower()
    if text in WELL_KNOWN_COMMUNITIES:
        return text
    parts = text.split(":")
    limit = {2: 0xFFFF, 3: 0xFFFFFFFF}.get(len(parts))
    if limit is None or not all(p.isdigit() and int(p) <= limit for p in parts):
        raise ParseError(
            f'{path}: {value!r} is not a community ("65000:100", "65000:1:2" or a '
            f"well-known name such as no-export)"
        )
    return ":".join(str(int(p)) for p in parts)


def _names(raw: Any, path: str) -> tuple[str, ...]:
    names = sequence(raw, path)
    if not all(isinstance(n, str) and n for n in names):
        raise ParseError(f"{path}: must be a list of names")
    return tuple(sorted(set(names)))


# ---------------------------------------------------------------------------------------------
# Dispatch


KubeObject = Service | EndpointSlice | Node | Secret | IPPool | BGPPeer | BGPAdvertisement

PARSERS = {
    SERVICE: parse_service,
    ENDPOINT_SLICE: parse_endpoint_slice,
    NODE: parse_node,
    SECRET: parse_secret,
    IP_POOL: parse_ip_pool,
    BGP_PEER: parse_bgp_peer,
    BGP_ADVERTISEMENT: parse_bgp_advertisement,
}


def object_ref(obj: Any) -> ObjectRef:
    """The (kind, namespace, name) an object claims, from whatever it holds; never raises.

    Errors are reported against it, so it uses the same namespace defaulting as the parsers.
    """
    if not isinstance(obj, Mapping):
        return ObjectRef("", "", "")
    kind = obj.get("kind")
    kind = kind if isinstance(kind, str) else ""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name")
    name = name if isinstance(name, str) else ""
    ns = ""
    if kind not in CLUSTER_SCOPED:
        ns = meta.get("namespace")
        ns = ns if isinstance(ns, str) and ns else "default"
    return ObjectRef(kind, ns, name)


def parse_object(obj: Mapping[str, Any]) -> KubeObject:
    """Parse any of ALL_KINDS; ParseError for bad objects and for kinds Weir does not read."""
    if not isinstance(obj, Mapping):
        raise ParseError("not an object")
    kind = obj.get("kind")
    parser = PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ParseError(f"kind {kind!r} is not one Weir reads")
    try:
        return parser(obj)
    except ParseError:
        raise
    except Exception as e:
        # A safety net for shapes the field readers did not foresee: bad input must never
        # take the controller down.
        raise ParseError(f"malformed {kind}: {type(e).__name__}: {e}") from None


class _Meta(NamedTuple):
    namespace: str
    name: str
    uid: str
    created: datetime | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def _metadata(obj: Mapping[str, Any], *, namespaced: bool, weir: bool = False) -> _Meta:
    if weir:
        api = obj.get("apiVersion")
        if api != WEIR_API_VERSION:
            raise ParseError(f"apiVersion: {api!r} is not {WEIR_API_VERSION}")
    meta = mapping(obj.get("metadata"), "metadata")
    name = string(meta.get("name"), "metadata.name", required=True)
    ns = ""
    if namespaced:
        ns = string(meta.get("namespace"), "metadata.namespace") or "default"
    created = None
    ts = meta.get("creationTimestamp")
    if ts is not None:
        if isinstance(ts, datetime):  # YAML turns unquoted timestamps into datetimes
            created = ts
        else:
            try:
                created = datetime.fromisoformat(string(ts, "metadata.creationTimestamp"))
            except ValueError:
                raise ParseError(f"metadata.creationTimestamp: {ts!r} is not a time") from None
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
    return _Meta(
        namespace=ns,
        name=name,
        uid=string(meta.get("uid"), "metadata.uid"),
        created=created,
        labels=string_map(meta.get("labels"), "metadata.labels"),
        annotations=string_map(meta.get("annotations"), "metadata.annotations"),
    )
