"""Manifests for weir-controller's file source: the objects a lab or a test declares (Services,
EndpointSlices, Nodes, BGPPeers) as dicts, written atomically (the source never reads half a
file)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

LB_LABEL = "weir.dev/load-balancer"


def service(
    name: str, vip: str, port: int, *, strategy: str | None = None, namespace: str = "default"
) -> dict[str, Any]:
    """A LoadBalancer Service of Weir's class; the file source has no IPAM, so the VIP comes
    from the weir.dev/load-balancer-ips annotation."""
    annotations = {"weir.dev/load-balancer-ips": vip}
    if strategy is not None:
        annotations["weir.dev/traffic-strategy"] = strategy
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "weir.dev/maglev",
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def endpoint_slice(
    service_name: str, port: int, addresses: Iterable[str], *, namespace: str = "default"
) -> dict[str, Any]:
    """The service's one EndpointSlice: every address ready."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }


def node(name: str, address: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A load-balancer Node (labelled so BGPPeers select it)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {LB_LABEL: "true", **(labels or {})}},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def bgp_peer(
    name: str, address: str, peer_asn: int, local_asn: int, **spec: object
) -> dict[str, Any]:
    """A BGPPeer for every load-balancer Node; spec adds fields (holdTime, gracefulRestart)."""
    return {
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "BGPPeer",
        "metadata": {"name": name},
        "spec": {
            "peerAddress": address,
            "peerASN": peer_asn,
            "localASN": local_asn,
            **spec,
            "nodeSelector": {"matchLabels": {LB_LABEL: "true"}},
        },
    }


def write(path: Path, docs: Sequence[Mapping[str, Any]]) -> None:
    """Write docs as one multi-document YAML file, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.rename(path)
