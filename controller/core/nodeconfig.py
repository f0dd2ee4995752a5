"""Each node's roles and what they need: the NodeConfig of its view (docs/FORWARDING.md).

- load balancer: the Nodes matching the controller's --lb-node-selector. Their views carry
  every frontend (controller/core/views.py); the others' carry none, so views stay small.
- backend: the nodes hosting endpoints reached by encapsulation. Their NodeConfig lists those
  endpoints' translations (local_endpoints) and the LB nodes' addresses, the only sources
  they accept encapsulated packets from.

Every Node Weir knows gets one, with its address (its first IPv4 InternalIP); the
encapsulation port goes to the nodes that have a role, so a node with neither role has only
its address.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

from weir.common.pb import pb
from weir.controller.core.bgpconfig import ErrorSink
from weir.controller.core.objects import NODE
from weir.controller.core.selectors import LabelSelector, parse_selector_string
from weir.controller.core.state import ClusterInputs

DEFAULT_LB_NODE_SELECTOR = "weir.dev/load-balancer=true"
DEFAULT_LB_NODES = parse_selector_string(DEFAULT_LB_NODE_SELECTOR)
DEFAULT_ENCAP_PORT = 6093

# node -> its endpoints' translations, as pb.LocalEndpoint fields (service_id, vip, port,
# protocol, address, target_port), in the order reduce builds frontends and backends: by
# service id, then by address and port, which is the order NodeConfig lists them in.
LocalEndpoints = dict[str, list[tuple[str, str, int, int, str, int]]]


@dataclass(frozen=True)
class NodeIndex:
    addresses: Mapping[str, str]  # node -> its address, for the nodes that have one
    load_balancers: frozenset[str]  # the nodes with the load-balancer role


def index_nodes(inputs: ClusterInputs, lb_selector: LabelSelector) -> NodeIndex:
    addresses: dict[str, str] = {}
    load_balancers: set[str] = set()
    for name, node in inputs.nodes.items():
        address = node.internal_ip()
        if address:
            addresses[name] = address
        if lb_selector.matches(node.labels):
            load_balancers.add(name)
    return NodeIndex(addresses, frozenset(load_balancers))


def add_node_views(
    cluster: pb.ClusterSnapshot,
    inputs: ClusterInputs,
    index: NodeIndex,
    local: LocalEndpoints,
    encap_port: int,
    error: ErrorSink,
) -> None:
    """Add a pb.NodeView for every Node to cluster.node_views, sorted by node name (built in
    place: a big cluster's local endpoints are as many as its backends)."""
    lb_addresses = sorted(
        {index.addresses[n] for n in index.load_balancers if n in index.addresses},
        key=socket.inet_aton,
    )
    if local:  # encapsulation is in use: an LB node without an address cannot take part
        for name in sorted(index.load_balancers - index.addresses.keys()):
            error(
                NODE,
                "",
                name,
                "load-balancer node without an IPv4 InternalIP: it cannot encapsulate to "
                "backends' nodes, and they would not accept its packets",
            )
    add_view = cluster.node_views.add
    for name in sorted(inputs.nodes):
        lb = name in index.load_balancers
        endpoints = local.get(name)
        config = add_view(node=name).config
        config.load_balancer = lb
        config.address = index.addresses.get(name, "")
        if lb or endpoints:
            config.encap_port = encap_port
        if endpoints:
            add = config.local_endpoints.add
            for service_id, vip, port, protocol, address, target_port in endpoints:
                add(
                    service_id=service_id,
                    vip=vip,
                    port=port,
                    protocol=protocol,
                    address=address,
                    target_port=target_port,
                )
            config.lb_node_addresses.extend(lb_addresses)
