"""The kinds the fake kube-apiserver serves, with the server-side behaviour of each that a
client can observe: defaulting, validation, immutable fields, status subresources, strategic
merge keys. Modelled on the real registry strategies; where the fake is simpler it says so.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .fakeapi_patch import MergeKeys

Obj = dict[str, Any]
Errors = list[str]

META_MERGE_KEYS: MergeKeys = {
    ("metadata", "finalizers"): None,
    ("metadata", "ownerReferences"): "uid",
}

QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
CONDITION_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
# metav1.MicroTime is parsed with Go's RFC3339Micro layout: exactly six fraction digits.
RFC3339_MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool = False
    merge_keys: MergeKeys | None = None  # None: strategic merge patch unsupported (CRDs)
    unconditional_update: bool = True  # PUT without metadata.resourceVersion allowed
    clear_status_on_create: bool = False
    # metadata.generation is kept only by the strategies that do so (custom resources,
    # EndpointSlices, workloads...); Services, Nodes, Leases... have none.
    tracks_generation: bool = False
    short_names: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None  # CRDs: openAPIV3Schema
    default: Callable[[Obj, FakeAllocators], None] | None = None  # on create
    validate: Callable[[Obj], Errors] | None = None
    validate_update: Callable[[Obj, Obj], Errors] | None = None  # (old, new)
    validate_status: Callable[[Obj], Errors] | None = None
    normalize: Callable[[Obj], None] | None = None  # on every write (e.g. Secret stringData)
    virtual: bool = False  # create-only, answered and never stored (TokenReview)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def is_custom(self) -> bool:
        return self.merge_keys is None

    def subresources(self) -> list[str]:
        return ["status"] if self.has_status else []


@dataclass
class FakeAllocators:
    """Cluster IPs and node ports, allocated like the real server does on Service create."""

    next_cluster_ip: int = int(ipaddress.IPv4Address("10.96.0.10"))
    next_cluster_ip6: int = int(ipaddress.IPv6Address("fd00:96::10"))
    next_node_port: int = 30000

    def cluster_ip(self, family: str) -> str:
        if family == "IPv6":
            self.next_cluster_ip6 += 1
            return str(ipaddress.IPv6Address(self.next_cluster_ip6))
        self.next_cluster_ip += 1
        return str(ipaddress.IPv4Address(self.next_cluster_ip))

    def node_port(self) -> int:
        self.next_node_port += 1
        return self.next_node_port


# --- shared checks -------------------------------------------------------------------------


def _is_ip(value: Any, family: str | None = None) -> bool:
    try:
        addr = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        return False
    return family is None or (addr.version == 4) == (family == "IPv4")


def validate_conditions(conds: Any, path: str) -> Errors:
    """metav1.Condition validation, as ValidateConditions in apimachinery."""
    if conds is None:
        return []
    if not isinstance(conds, list):
        return [f"{path}: Invalid value: must be a list"]
    errs: Errors = []
    seen = set()
    for i, c in enumerate(conds):
        p = f"{path}[{i}]"
        if not isinstance(c, Mapping):
            errs.append(f"{p}: Invalid value: must be an object")
            continue
        ctype = c.get("type", "")
        if not ctype or not QUALIFIED_NAME.match(ctype):
            errs.append(f"{p}.type: Invalid value: {ctype!r}: must be a qualified name")
        if ctype in seen:
            errs.append(f"{p}.type: Duplicate value: {ctype!r}")
        seen.add(ctype)
        if c.get("status") not in ("True", "False", "Unknown"):
            errs.append(f"{p}.status: Unsupported value: {c.get('status')!r}")
        reason = c.get("reason", "")
        if not reason:
            errs.append(f"{p}.reason: Required value")
        elif len(reason) > 1024 or not CONDITION_REASON.match(reason):
            errs.append(f"{p}.reason: Invalid value: {reason!r}")
        if len(c.get("message", "")) > 32768:
            errs.append(f"{p}.message: Too long")
        ltt = c.get("lastTransitionTime")
        if not isinstance(ltt, str) or not RFC3339.match(ltt):
            errs.append(f"{p}.lastTransitionTime: Required value: must be set (RFC 3339)")
        og = c.get("observedGeneration", 0)
        if not isinstance(og, int) or og < 0:
            errs.append(f"{p}.observedGeneration: Invalid value: must be >= 0")
    return errs


# --- core/v1 Service ------------------------------------------------------------------------


def _service_default(obj: Obj, alloc: FakeAllocators) -> None:
    spec = obj.setdefault("spec", {})
    stype = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    if stype == "ExternalName":
        return
    families = spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if stype == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if spec.get("clusterIP") != "None":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = alloc.cluster_ip(families[0])
        spec["clusterIPs"] = [spec["clusterIP"]]
    wants_node_ports = stype == "NodePort" or (
        stype == "LoadBalancer" and spec["allocateLoadBalancerNodePorts"]
    )
    if wants_node_ports:
        for port in spec.get("ports") or []:
            port.setdefault("nodePort", alloc.node_port())


def _service_validate(obj: Obj) -> Errors:
    spec = obj.get("spec") or {}
    errs: Errors = []
    stype = spec.get("type")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errs.append(f"spec.type: Unsupported value: {stype!r}")
    ports = spec.get("ports") or []
    if not ports and stype != "ExternalName" and spec.get("clusterIP") != "None":
        errs.append("spec.ports: Required value")
    seen = set()
    for i, port in enumerate(ports):
        num, proto = port.get("port"), port.get("protocol")
        if not isinstance(num, int) or not 1 <= num <= 65535:
            errs.append(f"spec.ports[{i}].port: Invalid value: {num!r}")
        if proto not in ("TCP", "UDP", "SCTP"):
            errs.append(f"spec.ports[{i}].protocol: Unsupported value: {proto!r}")
        if (num, proto) in seen:
            errs.append(f"spec.ports[{i}]: Duplicate value: {num}/{proto}")
        seen.add((num, proto))
        if len(ports) > 1 and not port.get("name"):
            errs.append(f"spec.ports[{i}].name: Required value")
    lbc = spec.get("loadBalancerClass")
    if lbc is not None:
        if stype != "LoadBalancer":
            errs.append("spec.loadBalancerClass: Invalid value: only for type LoadBalancer")
        elif "/" not in lbc or not QUALIFIED_NAME.match(lbc):
            errs.append(f"spec.loadBalancerClass: Invalid value: {lbc!r}: needs a domain prefix")
    lbip = spec.get("loadBalancerIP")
    if lbip and not _is_ip(lbip):
        errs.append(f"spec.loadBalancerIP: Invalid value: {lbip!r}: must be a valid IP address")
    return errs


def _service_validate_update(old: Obj, new: Obj) -> Errors:
    errs: Errors = []
    o, n = old.get("spec") or {}, new.get("spec") or {}
    if n.get("type") != "LoadBalancer" and "status" in new:
        # As the real strategy: a Service that is no longer a LoadBalancer has no LB status.
        new["status"]["loadBalancer"] = {}
    if o.get("clusterIP") and n.get("clusterIP") not in (None, "", o.get("clusterIP")):
        errs.append("spec.clusterIP: Invalid value: field is immutable")
    if n.get("clusterIP") in (None, "") and o.get("clusterIP"):
        n["clusterIP"], n["clusterIPs"] = o["clusterIP"], o.get("clusterIPs")
    if o.get("type") == "LoadBalancer" and n.get("type") == "LoadBalancer":
        if o.get("loadBalancerClass") != n.get("loadBalancerClass"):
            errs.append("spec.loadBalancerClass: Invalid value: may not change once set")
    return errs


def _drop_ip_mode(obj: Obj) -> None:
    """Before Kubernetes 1.30 (LoadBalancerIPMode off) the server drops ingress[].ipMode."""
    for ing in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if isinstance(ing, dict):
            ing.pop("ipMode", None)


def _service_validate_status(obj: Obj, *, ip_mode: bool = True) -> Errors:
    """ip_mode: whether the simulated version has ingress[].ipMode (1.30 and later)."""
    if not ip_mode:
        _drop_ip_mode(obj)
    status = obj.get("status") or {}
    errs: Errors = []
    for i, ing in enumerate((status.get("loadBalancer") or {}).get("ingress") or []):
        p = f"status.loadBalancer.ingress[{i}]"
        ip = ing.get("ip")
        if ip and not _is_ip(ip):
            errs.append(f"{p}.ip: Invalid value: {ip!r}: must be a valid IP address")
        mode = ing.get("ipMode")
        if not ip_mode:
            continue
        if ip and mode is None:
            ing["ipMode"] = "VIP"  # the server's defaulting
        elif mode is not None and not ip:
            errs.append(f"{p}.ipMode: Forbidden: may not be specified when `ip` is not set")
        elif mode not in (None, "VIP", "Proxy"):
            errs.append(f"{p}.ipMode: Unsupported value: {mode!r}")
    errs += validate_conditions(status.get("conditions"), "status.conditions")
    return errs


# --- others -----------------------------------------------------------------------------------


def _namespace_default(obj: Obj, _: FakeAllocators) -> None:
    labels = obj["metadata"].setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    obj.setdefault("status", {"phase": "Active"})


def _secret_normalize(obj: Obj) -> None:
    """The server folds stringData into data (base64) and never stores stringData."""
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {})
    for k, v in string_data.items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    obj.setdefault("type", "Opaque")


def _secret_validate(obj: Obj) -> Errors:
    errs: Errors = []
    data = obj.get("data") or {}
    for k, v in data.items():
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, TypeError):
            errs.append(f"data[{k}]: Invalid value: illegal base64 data")
    if obj.get("type") == "kubernetes.io/tls":  # as the real validation of typed Secrets
        errs += [f"data[{k}]: Required value" for k in ("tls.crt", "tls.key") if k not in data]
    return errs


def _configmap_validate(obj: Obj) -> Errors:
    errs: Errors = []
    for k, v in (obj.get("data") or {}).items():
        if not re.match(r"^[-._a-zA-Z0-9]+$", k) or len(k) > 253:
            errs.append(
                f"data[{k}]: Invalid value: a valid config key must consist of "
                "alphanumeric characters, '-', '_' or '.'"
            )
        if not isinstance(v, str):
            errs.append(f"data[{k}]: Invalid value: must be a string")
    return errs


def _pod_validate(obj: Obj) -> Errors:
    spec = obj.get("spec") or {}
    return [] if spec.get("containers") else ["spec.containers: Required value"]


def _pod_default(obj: Obj, _: FakeAllocators) -> None:
    obj.setdefault("spec", {}).setdefault("serviceAccountName", "default")


def _endpointslice_validate(obj: Obj) -> Errors:
    family = obj.get("addressType")
    if family not in ("IPv4", "IPv6", "FQDN"):
        return [f"addressType: Unsupported value: {family!r}"]
    errs: Errors = []
    for i, ep in enumerate(obj.get("endpoints") or []):
        addrs = ep.get("addresses") or []
        if not 1 <= len(addrs) <= 100:
            errs.append(f"endpoints[{i}].addresses: Invalid value: must have 1 to 100 addresses")
        for a in addrs:
            if family != "FQDN" and not _is_ip(a, family):
                errs.append(f"endpoints[{i}].addresses: Invalid value: {a!r} is not {family}")
    for i, port in enumerate(obj.get("ports") or []):
        num = port.get("port")
        if num is not None and (not isinstance(num, int) or not 1 <= num <= 65535):
            errs.append(f"ports[{i}].port: Invalid value: {num!r}")
    return errs


def _endpointslice_default(obj: Obj, _: FakeAllocators) -> None:
    for port in obj.get("ports") or []:
        port.setdefault("protocol", "TCP")


def _event_validate(obj: Obj) -> Errors:
    errs: Errors = []
    inv = obj.get("involvedObject")
    if not isinstance(inv, Mapping) or not inv.get("kind"):
        return ["involvedObject: Required value"]
    ns = obj["metadata"].get("namespace")
    if inv.get("namespace") and inv["namespace"] != ns:
        errs.append("involvedObject.namespace: Invalid value: does not match event.namespace")
    if obj.get("type") not in (None, "Normal", "Warning"):
        errs.append(f"type: Unsupported value: {obj.get('type')!r}")
    if not obj.get("reason"):
        errs.append("reason: Required value")  # stricter than v1 legacy; Weir always sets it
    if len(obj.get("reason") or "") > 128:
        errs.append("reason: Too long: must have at most 128 bytes")
    if len(obj.get("message") or "") > 1024:
        errs.append("message: Too long: must have at most 1024 bytes")
    component = obj.get("reportingComponent") or ""
    if component and not QUALIFIED_NAME.match(component):
        errs.append(f"reportingComponent: Invalid value: {component!r}")
    if len(obj.get("reportingInstance") or "") > 128:
        errs.append("reportingInstance: Too long: must have at most 128 bytes")
    for f in ("firstTimestamp", "lastTimestamp"):
        if obj.get(f) is not None and not RFC3339.match(str(obj[f])):
            errs.append(f"{f}: Invalid value: not RFC 3339")
    return errs


def _lease_validate(obj: Obj) -> Errors:
    spec = obj.get("spec") or {}
    errs: Errors = []
    dur = spec.get("leaseDurationSeconds")
    if dur is not None and (not isinstance(dur, int) or dur <= 0):
        errs.append("spec.leaseDurationSeconds: Invalid value: must be greater than 0")
    trans = spec.get("leaseTransitions")
    if trans is not None and (not isinstance(trans, int) or trans < 0):
        errs.append("spec.leaseTransitions: Invalid value: must be >= 0")
    for f in ("acquireTime", "renewTime"):
        value = spec.get(f)
        if value is not None and not (isinstance(value, str) and RFC3339_MICRO.match(value)):
            errs.append(f"spec.{f}: Invalid value: {value!r}: not a MicroTime (RFC3339Micro)")
    return errs


def _crd_validate(obj: Obj) -> Errors:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    errs = [f"spec.{f}: Required value" for f in ("group", "scope", "versions") if not spec.get(f)]
    errs += [f"spec.names.{f}: Required value" for f in ("plural", "kind") if not names.get(f)]
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        errs.append(f"spec.scope: Unsupported value: {spec.get('scope')!r}")
    if not errs and obj["metadata"]["name"] != f"{names['plural']}.{spec['group']}":
        errs.append('metadata.name: Invalid value: must be spec.names.plural+"."+spec.group')
    for i, ver in enumerate(spec.get("versions") or []):
        if not (ver.get("schema") or {}).get("openAPIV3Schema"):
            errs.append(f"spec.versions[{i}].schema.openAPIV3Schema: Required value")
    return errs


# The Kubernetes version the fake simulates by default, and the first that has ipMode.
DEFAULT_VERSION = (1, 32)
IP_MODE_SINCE = (1, 30)


def builtin_types(version: tuple[int, int] = DEFAULT_VERSION) -> list[ResourceType]:
    node_keys = {
        **META_MERGE_KEYS,
        ("status", "conditions"): "type",
        ("status", "addresses"): "type",
    }
    svc_keys = {**META_MERGE_KEYS, ("spec", "ports"): "port", ("status", "conditions"): "type"}
    return [
        ResourceType(
            "",
            "v1",
            "namespaces",
            "Namespace",
            False,
            has_status=True,
            merge_keys=META_MERGE_KEYS,
            short_names=("ns",),
            default=_namespace_default,
        ),
        ResourceType(
            "",
            "v1",
            "services",
            "Service",
            True,
            has_status=True,
            merge_keys=svc_keys,
            clear_status_on_create=True,
            short_names=("svc",),
            default=_service_default,
            validate=_service_validate,
            validate_update=_service_validate_update,
            validate_status=functools.partial(
                _service_validate_status, ip_mode=version >= IP_MODE_SINCE
            ),
        ),
        ResourceType(
            "",
            "v1",
            "nodes",
            "Node",
            False,
            has_status=True,
            merge_keys=node_keys,
            short_names=("no",),
        ),
        ResourceType(
            "",
            "v1",
            "secrets",
            "Secret",
            True,
            merge_keys=META_MERGE_KEYS,
            normalize=_secret_normalize,
            validate=_secret_validate,
        ),
        ResourceType(
            "",
            "v1",
            "events",
            "Event",
            True,
            merge_keys=META_MERGE_KEYS,
            short_names=("ev",),
            validate=_event_validate,
        ),
        ResourceType(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            True,
            tracks_generation=True,
            merge_keys={**META_MERGE_KEYS, ("endpoints",): None},
            default=_endpointslice_default,
            validate=_endpointslice_validate,
        ),
        ResourceType(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            True,
            merge_keys=META_MERGE_KEYS,
            # The Lease strategy, unlike most built-in ones, refuses an update without one.
            unconditional_update=False,
            validate=_lease_validate,
        ),
        ResourceType(
            "", "v1", "serviceaccounts", "ServiceAccount", True, merge_keys=META_MERGE_KEYS
        ),
        ResourceType(
            "",
            "v1",
            "pods",
            "Pod",
            True,
            has_status=True,
            merge_keys=META_MERGE_KEYS,
            short_names=("po",),
            default=_pod_default,
            validate=_pod_validate,
        ),
        ResourceType(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            True,
            merge_keys=META_MERGE_KEYS,
            short_names=("cm",),
            validate=_configmap_validate,
        ),
        ResourceType(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            True,
            has_status=True,
            tracks_generation=True,
            merge_keys=META_MERGE_KEYS,
            short_names=("deploy",),
        ),
        # Created, never stored (tests/kube/fakeapi_tokens.py answers it).
        ResourceType(
            "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, virtual=True
        ),
        ResourceType(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            has_status=True,
            merge_keys=META_MERGE_KEYS,
            short_names=("crd",),
            validate=_crd_validate,
        ),
    ]


def crd_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for ver in spec["versions"]:
        if not ver.get("served", True):
            continue
        schema = (ver.get("schema") or {}).get("openAPIV3Schema")
        out.append(
            ResourceType(
                spec["group"],
                ver["name"],
                names["plural"],
                names["kind"],
                spec["scope"] == "Namespaced",
                has_status="status" in (ver.get("subresources") or {}),
                merge_keys=None,
                unconditional_update=False,
                clear_status_on_create="status" in (ver.get("subresources") or {}),
                tracks_generation=True,
                short_names=tuple(names.get("shortNames") or ()),
                schema=schema,
            )
        )
    return out
