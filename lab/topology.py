"""The lab's network: namespaces, bridges and addresses (no Weir process yet).

    c1, c2 ── client bridge 10.66.1.0/24 ── router (BIRD 2, ECMP to the VIP over lb1..lb3)
                                               │
    ctl ── lb1 lb2 lb3 ── b1 b2 b3 b4 ─── server bridge 10.66.0.0/24

The backends hold the VIP on their loopback and route back to the clients through the
router: Direct Server Return.
"""

from __future__ import annotations

from dataclasses import dataclass

from weir.lab.netns import Host, Topology
from weir.lab.roles import attach_xdp_pass, dsr_backend, finish_checksums

PREFIX = "wlb"
VIP = "192.0.2.10"
PORT = 80
ROUTER_SERVER = "10.66.0.1"
ROUTER_CLIENT = "10.66.1.1"
CONTROLLER = "10.66.0.2"
CLIENTS = {"c1": "10.66.1.10", "c2": "10.66.1.11"}
NODES = {"lb1": "10.66.0.11", "lb2": "10.66.0.12", "lb3": "10.66.0.13"}
BACKENDS = {"b1": "10.66.0.21", "b2": "10.66.0.22", "b3": "10.66.0.23", "b4": "10.66.0.24"}


@dataclass
class LabNet:
    topo: Topology
    router: Host
    ctl: Host
    clients: dict[str, Host]
    nodes: dict[str, Host]
    backends: dict[str, Host]


def build(topo: Topology) -> LabNet:
    server = topo.bridge("srv")
    client_br = topo.bridge("cli")
    router = topo.host("router", forwarding=True)
    topo.link(router, server, f"{ROUTER_SERVER}/24", iface="eth0")
    topo.link(router, client_br, f"{ROUTER_CLIENT}/24", iface="eth1")

    clients = {}
    for name, addr in CLIENTS.items():
        h = clients[name] = topo.host(name)
        topo.link(h, client_br, f"{addr}/24")
        h.route("default", ROUTER_CLIENT)
        finish_checksums(h)

    ctl = topo.host("ctl")
    topo.link(ctl, server, f"{CONTROLLER}/24")

    nodes, node_ports = {}, []
    for name, addr in NODES.items():
        h = nodes[name] = topo.host(name)
        node_ports.append(topo.link(h, server, f"{addr}/24"))
        h.route("default", ROUTER_SERVER)

    backends = {}
    for name, addr in BACKENDS.items():
        h = backends[name] = topo.host(name)
        topo.link(h, server, f"{addr}/24")
        h.route("default", ROUTER_SERVER)
        dsr_backend(h, [VIP])
    attach_xdp_pass(node_ports)
    return LabNet(topo, router, ctl, clients, nodes, backends)
