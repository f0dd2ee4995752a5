"""The lab's network: namespaces, bridges and addresses (no Weir process yet).

    c1, c2 ── client bridge 10.66.1.0/24 ── router (BIRD 2, ECMP to the VIP over lb1..lb3)
                                               │
    ctl ── lb1 lb2 lb3 ── b1 b2 b3 b4 ─── server bridge 10.66.0.0/24

The backends hold the VIP on their loopback (arp_ignore=1, arp_announce=2: they never answer
ARP for it) and route back to the clients through the router: Direct Server Return.
"""

from __future__ import annotations

from dataclasses import dataclass

from weir.lab.netns import Host, Topology

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
    node_links: dict[str, str]  # node -> its veth end on the server bridge (root namespace)
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
        h.run(["ip", "route", "add", "default", "via", ROUTER_CLIENT])
        # A veth hands TCP segments on with partial checksums, which the LB nodes' XDP_TX
        # would pass on unfinished (a NIC would have completed them): finish them here.
        h.run(["ethtool", "-K", "eth0", "tx", "off"])

    ctl = topo.host("ctl")
    topo.link(ctl, server, f"{CONTROLLER}/24")

    nodes, node_links = {}, {}
    for name, addr in NODES.items():
        h = nodes[name] = topo.host(name)
        topo.link(h, server, f"{addr}/24")
        node_links[name] = topo.links[-1]
        h.run(["ip", "route", "add", "default", "via", ROUTER_SERVER])

    backends = {}
    for name, addr in BACKENDS.items():
        h = backends[name] = topo.host(name)
        topo.link(h, server, f"{addr}/24")
        h.run(["ip", "route", "add", "default", "via", ROUTER_SERVER])
        h.run(["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
        for key, value in (("arp_ignore", 1), ("arp_announce", 2)):
            for dev in ("all", "eth0"):
                h.run(["sysctl", "-qw", f"net.ipv4.conf.{dev}.{key}={value}"])
    # Native XDP_TX on a veth hands the frame to the peer's XDP receive path, which only runs
    # when the peer has an XDP program too: the bridge-side ends get a pass-through one
    # (a physical NIC needs nothing of the kind).
    attach_xdp_pass(list(node_links.values()))
    return LabNet(topo, router, ctl, clients, nodes, node_links, backends)


def attach_xdp_pass(interfaces: list[str]) -> None:
    from bcc import BPF

    bpf = BPF(text=b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = bpf.load_func(b"xdp_pass", BPF.XDP)
    for dev in interfaces:
        bpf.attach_xdp(dev.encode(), fn, 0)  # stays attached until the veth is deleted
    bpf.cleanup()
