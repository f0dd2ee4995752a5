"""Builders of Kubernetes-shaped objects for the state/reduce/file-source tests (the ones
that are the same for every suite, such as secret(), are in tests/kube/builders.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.reduce import ReduceConfig, ReduceResult, reduce
from weir.controller.core.state import ClusterState

FILES = ReduceConfig(maglev_seed=7, vips_from_annotation=True)
KUBE = ReduceConfig(maglev_seed=7, vips_from_annotation=False)

# (address, ready, serving, terminating) with None for an unset condition, or just an address.
EndpointSpec = str | tuple[str, bool | None, bool | None, bool | None]


def service(
    name: str,
    ns: str = "default",
    *,
    ips: Sequence[str] | None = ("192.0.2.1",),
    ports: Sequence[tuple[str, int, str]] = (("http", 80, "TCP"),),
    cls: str | None = "weir.dev/maglev",
    svc_type: str = "LoadBalancer",
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    created: str | None = None,
    status_ips: Sequence[str] = (),
    affinity_timeout: int | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Service; spec: more spec fields (or replacements, ports with targetPort, say)."""
    ann = dict(annotations or {})
    if ips is not None:
        ann["weir.dev/load-balancer-ips"] = ",".join(ips)
    meta: dict[str, Any] = {"name": name, "namespace": ns, "annotations": ann}
    if labels:
        meta["labels"] = labels
    if created:
        meta["creationTimestamp"] = created
    fields: dict[str, Any] = {
        "type": svc_type,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }
    if cls is not None:
        fields["loadBalancerClass"] = cls
    if affinity_timeout is not None:
        fields["sessionAffinity"] = "ClientIP"
        fields["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    fields.update(spec or {})
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": fields}
    if status_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in status_ips]}}
    return obj


def endpoint_slice(
    name: str,
    service_name: str,
    endpoints: Iterable[EndpointSpec],
    ns: str = "default",
    *,
    ports: Sequence[tuple[str, int, str]] = (("http", 8080, "TCP"),),
    family: str = "IPv4",
    node: str | None = "worker-1",
) -> dict[str, Any]:
    """A slice whose endpoints all run on node (None: no nodeName)."""
    eps = []
    for spec in endpoints:
        if isinstance(spec, str):
            spec = (spec, None, None, None)
        address, ready, serving, terminating = spec
        cond = {
            k: v
            for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
            if v is not None
        }
        ep: dict[str, Any] = {"addresses": [address], "conditions": cond}
        if node is not None:
            ep["nodeName"] = node
        eps.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": family,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        "endpoints": eps,
    }


LB = {"weir.dev/load-balancer": "true"}  # the label of load-balancer nodes (the default)


def node(name: str, ip: str | None = "172.16.0.1", **labels: str) -> dict[str, Any]:
    addresses = [{"type": "Hostname", "address": name}]
    if ip:
        addresses.insert(0, {"type": "InternalIP", "address": ip})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": addresses},
    }


def weir(kind: str, name: str, spec: dict[str, Any], **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "weir.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def peer(
    name: str, address: str = "172.16.0.254", asn: int = 64512, local: int = 64513, **spec: Any
) -> dict[str, Any]:
    return weir(
        "BGPPeer", name, {"peerAddress": address, "peerASN": asn, "localASN": local, **spec}
    )


def state_of(objects: Iterable[Any]) -> ClusterState:
    st = ClusterState()
    st.replace(ALL_KINDS, list(objects))
    return st


def run(objects: Iterable[Any], config: ReduceConfig = FILES) -> ReduceResult:
    return reduce(state_of(objects).inputs(), config)


def errors_for(result: ReduceResult, kind: str, name: str) -> list[str]:
    return [e.message for e in result.errors if e.kind == kind and e.name == name]


def backends(result: ReduceResult, service_id: str) -> list[tuple[str, int]]:
    for s in result.cluster.services:
        if s.id == service_id:
            return [(b.address, b.port) for b in s.backends]
    raise AssertionError(f"no service {service_id} in {[s.id for s in result.cluster.services]}")
