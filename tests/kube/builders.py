"""Kubernetes objects for the tests, as a user would apply them."""

from __future__ import annotations

from typing import Any

WEIR = "weir.dev/v1alpha1"
CLASS = "weir.dev/maglev"


def service(
    name: str,
    ns: str = "default",
    *,
    ports: list[tuple[int, str]] | None = None,
    cls: str | None = CLASS,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    ports = ports or [(80, "TCP")]
    body: dict[str, Any] = {
        "type": "LoadBalancer",
        "ports": [
            {"name": f"p{port}-{proto.lower()}", "port": port, "protocol": proto}
            for port, proto in ports
        ],
        **spec,
    }
    if cls:
        body["loadBalancerClass"] = cls
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": annotations or {},
            "labels": labels or {},
        },
        "spec": body,
    }


def pool(
    name: str, *cidrs: str, ranges: list[tuple[str, str]] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"cidrs": list(cidrs), **spec}
    if ranges:
        body["ranges"] = [{"start": a, "end": b} for a, b in ranges]
    return {
        "apiVersion": WEIR,
        "kind": "LoadBalancerIPPool",
        "metadata": {"name": name},
        "spec": body,
    }


def endpoint_slice(
    service_name: str, ns: str, addresses: list[str], port: int = 8080, node: str = "node-a"
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-abc",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "p80-tcp", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}, "nodeName": node} for a in addresses
        ],
    }


LB_NODE = {"weir.dev/load-balancer": "true"}  # the default label of load-balancer nodes


def node(name: str, address: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def peer(name: str, address: str, peer_asn: int = 65000, local_asn: int = 65001) -> dict:
    return {
        "apiVersion": WEIR,
        "kind": "BGPPeer",
        "metadata": {"name": name},
        "spec": {"peerAddress": address, "peerASN": peer_asn, "localASN": local_asn},
    }


def advertisement(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": WEIR,
        "kind": "BGPAdvertisement",
        "metadata": {"name": name},
        "spec": spec,
    }


def secret(name: str, ns: str, **string_data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": string_data,
    }


def service_account(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns},
    }


def pod(name: str, ns: str, node: str, account: str) -> dict[str, Any]:
    """A scheduled Pod running as the ServiceAccount (as the scheduler leaves it)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "containers": [{"name": "agent", "image": "weir"}],
        },
    }


def deployment(name: str, ns: str, replicas: int) -> dict[str, Any]:
    """A Deployment of one container, its selector matching its Pods' labels."""
    labels = {"app.kubernetes.io/name": name}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": name}]}}
    spec = {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
