"""Typed Kubernetes objects Weir reads, and their parsers; parse_object reads any of them.

Kubernetes' own kinds are here, Weir's custom resources in controller/core/crds.py.
Each `parse_*` function takes a Kubernetes JSON-shaped mapping and returns a frozen object, or
raises ParseError with a message naming the bad field. Two kinds of trouble are told apart:

- ParseError: the object cannot be understood (no name, a port out of range, a malformed
  selector). The state keeps an ObjectError for it and leaves the object out.
- `problems` (Service, EndpointSlice): the object is usable for Kubernetes but a Weir-specific
  part is wrong (a bad `weir.dev/...` annotation, one endpoint with a bad address). The object is
  kept, so IPAM and the reducer can report the problem only when the object concerns Weir.
- `warnings` (Service): a bad `weir.dev/...` annotation that has a safe default; the Service is
  still served, and the reducer reports the warning.
"""

from __future__ import annotations

import base64
import binascii
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from weir.common import protocols
from weir.common.tablesize import validate_table_size
from weir.controller.core import crds
from weir.controller.core.parsing import (
    DNS1035_LABEL,
    DNS_LABEL,
    EMPTY_MAP,
    ParseError,
    integer,
    mapping,
    metadata,
    sequence,
    string,
    vip,
)

LOAD_BALANCER_CLASS = "weir.dev/maglev"
ANN_TRAFFIC_STRATEGY = "weir.dev/traffic-strategy"
ANN_LOAD_BALANCER_IPS = "weir.dev/load-balancer-ips"
ANN_SHARING_KEY = "weir.dev/sharing-key"
ANN_MAGLEV_TABLE_SIZE = "weir.dev/maglev-table-size"
ANN_DRAIN = "weir.dev/drain"  # on a Node: "true" withdraws its routes (weirctl node drain)
ANN_FORWARDING = "weir.dev/forwarding"  # how LB nodes reach the backends: docs/FORWARDING.md
LABEL_SERVICE_NAME = "kubernetes.io/service-name"

SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
NODE = "Node"
SECRET = "Secret"
NAMESPACE = "Namespace"
# What the cluster snapshot is made of (reduce); Namespaces matter to IPAM only.
ALL_KINDS = frozenset((SERVICE, ENDPOINT_SLICE, NODE, SECRET, *crds.KINDS))
CLUSTER_SCOPED = frozenset((NODE, NAMESPACE, *crds.KINDS))

STRATEGIES = ("maglev", "random")
FORWARDING_MODES = ("auto", "encap", "l2")
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default for ClientIP affinity
_NAMES = list(protocols.NUMBERS)
_PROTOCOL_NAMES = f"{', '.join(_NAMES[:-1])} or {_NAMES[-1]}"  # for messages: "TCP, UDP or SCTP"


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


@dataclass(frozen=True, slots=True)
class FamilyPolicy:
    """spec.ipFamilies and spec.ipFamilyPolicy of a Service (the API server defaults both)."""

    families: tuple[str, ...] = ("IPv4",)
    policy: str = "SingleStack"  # SingleStack, PreferDualStack, RequireDualStack

    def wanted(self) -> tuple[int, ...]:
        """IP versions wanted, in the Service's order."""
        versions = tuple(6 if f == "IPv6" else 4 for f in self.families) or (4,)
        if self.policy == "SingleStack":
            return versions[:1]
        return tuple(dict.fromkeys((*versions, 6 if versions[0] == 4 else 4)))


class Ingress(NamedTuple):
    """A status.loadBalancer.ingress entry that has an ip, as written."""

    ip: str
    ip_mode: str  # "" when unset


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
    # What the allocator writes from, and compares its writes with:
    resource_version: str
    generation: int
    families: FamilyPolicy
    ingress: tuple[Ingress, ...]
    conditions: tuple[Mapping[str, Any], ...]  # status.conditions, as read (other writers')
    forwarding: str = "auto"  # weir.dev/forwarding: auto, encap or l2
    problems: tuple[str, ...] = ()  # bad weir.dev annotations or status; see module doc
    warnings: tuple[str, ...] = ()  # bad weir.dev annotations that fell back to a default

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
    meta = metadata(obj, namespaced=True, name_rule=DNS1035_LABEL)
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

    forwarding = ann.get(ANN_FORWARDING, "auto")
    warnings: list[str] = []
    if forwarding not in FORWARDING_MODES:
        warnings.append(
            f"annotation {ANN_FORWARDING}: {forwarding!r} is not auto, encap or l2; auto is used"
        )
        forwarding = "auto"

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
    written: list[Ingress] = []
    for i, ing in enumerate(sequence(lb_status.get("ingress"), "status.loadBalancer.ingress")):
        path = f"status.loadBalancer.ingress[{i}]"
        entry = mapping(ing, path)
        ip = entry.get("ip")
        if ip is not None:  # hostname-only entries are not ours
            ingress_raw.append(ip)
        if isinstance(ip, str) and ip:
            written.append(Ingress(ip, string(entry.get("ipMode"), f"{path}.ipMode")))
    ingress = _ips(ingress_raw, "status.loadBalancer.ingress", problems)
    families = sequence(spec.get("ipFamilies"), "spec.ipFamilies")
    if not all(isinstance(f, str) for f in families):
        raise ParseError("spec.ipFamilies: must be strings")

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
        resource_version=meta.resource_version,
        generation=meta.generation,
        families=FamilyPolicy(
            tuple(families) or ("IPv4",),
            string(spec.get("ipFamilyPolicy"), "spec.ipFamilyPolicy") or "SingleStack",
        ),
        ingress=tuple(written),
        conditions=tuple(
            dict(c)
            for c in sequence(status.get("conditions"), "status.conditions")
            if isinstance(c, Mapping)
        ),
        forwarding=forwarding,
        problems=tuple(problems),
        warnings=tuple(warnings),
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
        if proto not in protocols.NUMBERS:
            raise ParseError(f"{path}.protocol: {proto!r} is not {_PROTOCOL_NAMES}")
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
    """Canonical VIPs, deduplicated in order; bad entries become problems."""
    out: list[str] = []
    for value in raw:
        try:
            ip = vip(value, path)
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


_FAMILIES = {"IPv4": socket.AF_INET, "IPv6": socket.AF_INET6}


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    meta = metadata(obj, namespaced=True)
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
        if proto not in protocols.NUMBERS:
            raise ParseError(f"{path}.protocol: {proto!r} is not {_PROTOCOL_NAMES}")
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


_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


def _is_opt_bool(v: Any) -> bool:
    return v is None or v is True or v is False


# ---------------------------------------------------------------------------------------------
# Node, Secret and Namespace


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

    def internal_ip(self) -> str:
        """The first IPv4 InternalIP ("" when none): where encapsulated packets go to and
        come from (docs/FORWARDING.md)."""
        for a in self.addresses:
            if a.type == "InternalIP" and _is_ipv4(a.address):
                return a.address
        return ""

    def router_id(self) -> str:
        """The BGP router id: the first IPv4 InternalIP, else the first IPv4 of any type."""
        return self.internal_ip() or next(
            (a.address for a in self.addresses if _is_ipv4(a.address)), ""
        )


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return False
    return True


def parse_node(obj: Mapping[str, Any]) -> Node:
    meta = metadata(obj, namespaced=False)
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


def parse_secret(obj: Mapping[str, Any]) -> Secret:
    meta = metadata(obj, namespaced=True)
    data: dict[str, bytes] = {}
    for k, v in mapping(obj.get("data"), "data").items():
        try:
            data[str(k)] = base64.b64decode(string(v, f"data.{k}"), validate=True)
        except binascii.Error:
            raise ParseError(f"data.{k}: not valid base64") from None
    for k, v in mapping(obj.get("stringData"), "stringData").items():
        data[str(k)] = string(v, f"stringData.{k}").encode()
    return Secret(namespace=meta.namespace, name=meta.name, data=data)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str]  # what LoadBalancerIPPool namespaceSelectors match


def parse_namespace(obj: Mapping[str, Any]) -> Namespace:
    meta = metadata(obj, namespaced=False, name_rule=DNS_LABEL)
    return Namespace(name=meta.name, labels=meta.labels)


# ---------------------------------------------------------------------------------------------
# Any kind


KubeObject = (
    Service
    | EndpointSlice
    | Node
    | Secret
    | Namespace
    | crds.IPPool
    | crds.BGPPeer
    | crds.BGPAdvertisement
)

PARSERS: dict[str, Callable[[Mapping[str, Any]], KubeObject]] = {
    SERVICE: parse_service,
    ENDPOINT_SLICE: parse_endpoint_slice,
    NODE: parse_node,
    SECRET: parse_secret,
    NAMESPACE: parse_namespace,
    crds.IP_POOL: crds.parse_ip_pool,
    crds.BGP_PEER: crds.parse_bgp_peer,
    crds.BGP_ADVERTISEMENT: crds.parse_bgp_advertisement,
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
        raw_ns = meta.get("namespace")
        ns = raw_ns if isinstance(raw_ns, str) and raw_ns else "default"
    return ObjectRef(kind, ns, name)


def parse_object(obj: Mapping[str, Any]) -> KubeObject:
    """Parse any kind of PARSERS; ParseError for bad objects and for kinds Weir does not read."""
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
