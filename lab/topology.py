"""The lab's network: namespaces, bridges and addresses (no Weir process yet).

    c1, c2 ── client bridge 10.66.1.0/24 ── router (BIRD 2, ECMP to the VIPs over lb1..lb3)
                                             │                         │
    ctl ── lb1 lb2 lb3 ── b1 b2 b3 b4 ── server bridge         node bridge 10.66.2.0/24
                                          10.66.0.0/24          │       │       │
                                                                n1      n2      n3
                                                            cni0 10.244.<i>.1/24, pods
                                                            p<i>a .10 and p<i>b .11

The backends b1..b4 hold the web VIP on their loopback and answer from it (L2 Direct Server
Return). The workers n1..n3 are Kubernetes nodes in another subnet: the shop VIP's pods
listen on 8080 and hold no VIP; the LB nodes encapsulate to their node, which translates
(docs/FORWARDING.md), and the pods' replies leave from their node straight to the client.
Each worker carries what a real node has around its pods: a CNI's masquerade of pod
traffic leaving the cluster, kube-proxy's DNAT for the VIP and its drop of conntrack-INVALID
packets in FORWARD. The router filters reverse paths loosely, as replies from the VIPs
arrive from the workers' side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from weir.lab.netns import Bridge, Host, Topology
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
ROUTER_WORKERS = "10.66.2.1"
WORKERS = {"n1": "10.66.2.11", "n2": "10.66.2.12", "n3": "10.66.2.13"}
POD_VIP = "192.0.2.20"
POD_PORT = 8080
BULK_PORT, BULK_POD_PORT = 9000, 9090  # the shop Service's second port: large transfers
DNS_PORT, DNS_POD_PORT = 53, 5353  # UDP echo on both Services: large datagrams, fragmented
POD_CIDR = "10.244.0.0/16"
# pod -> (its worker, its address)
PODS = {
    f"p{i}{x}": (f"n{i}", f"10.244.{i}.{10 + j}") for i in (1, 2, 3) for j, x in enumerate("ab")
}


# Replies, counted where they pass: a packet from a VIP must never reach an LB node (direct
# server return), and the router must see the pods' replies come in from the workers.
LB_REPLY_RULES = f"""
table netdev replies {{
    chain in {{
        type filter hook ingress device eth0 priority 0;
        ip saddr {{ {VIP}, {POD_VIP} }} counter
    }}
}}
"""
ROUTER_REPLY_RULES = f"""
table ip replies {{
    chain forward {{
        type filter hook forward priority 0;
        iifname "eth2" ip saddr {POD_VIP} counter
    }}
}}
"""


def replies_counted(host: Host, family: str) -> int:
    """Packets the host's `replies` table (LB_REPLY_RULES, ROUTER_REPLY_RULES) counted."""
    ruleset = json.loads(host.run(["nft", "-j", "list", "table", family, "replies"]))
    return sum(
        expr["counter"]["packets"]
        for item in ruleset["nftables"]
        for expr in item.get("rule", {}).get("expr", [])
        if "counter" in expr
    )


def worker_rules(vip: str, port: int, some_pod: str) -> str:
    """What kube-proxy (iptables/nftables mode) and a CNI put on a node, in nftables."""
    return f"""
table ip kubelike {{
    chain prerouting {{
        type nat hook prerouting priority dstnat;
        ip daddr {vip} tcp dport {port} dnat to {some_pod}:{POD_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        ip saddr {POD_CIDR} ip daddr != {POD_CIDR} masquerade
    }}
    chain forward {{
        type filter hook forward priority filter;
        ct state invalid counter drop
    }}
}}
"""


@dataclass
class LabNet:
    topo: Topology
    router: Host
    ctl: Host
    clients: dict[str, Host]
    nodes: dict[str, Host]  # the load-balancer nodes
    backends: dict[str, Host]
    workers: dict[str, Host]
    pods: dict[str, Host]


def build(topo: Topology) -> LabNet:
    server = topo.bridge("srv")
    client_br = topo.bridge("cli")
    worker_br = topo.bridge("wrk")
    # Replies from the VIPs come in from the workers: a strict reverse-path check (the VIP's
    # route points at the LB nodes) would drop them all.
    router = topo.host(
        "router",
        forwarding=True,
        sysctls={f"net.ipv4.conf.{dev}.rp_filter": 2 for dev in ("all", "default")},
    )
    topo.link(router, server, f"{ROUTER_SERVER}/24", iface="eth0")
    topo.link(router, client_br, f"{ROUTER_CLIENT}/24", iface="eth1")
    topo.link(router, worker_br, f"{ROUTER_WORKERS}/24", iface="eth2")
    router.nft(ROUTER_REPLY_RULES)

    clients = {}
    for name, addr in CLIENTS.items():
        h = clients[name] = topo.host(name)
        topo.link(h, client_br, f"{addr}/24")
        h.route("default", ROUTER_CLIENT)
        finish_checksums(h)

    ctl = topo.host("ctl")
    topo.link(ctl, server, f"{CONTROLLER}/24")
    ctl.route("default", ROUTER_SERVER)  # the workers' agents reach it through the router

    nodes, node_ports = {}, []
    for name, addr in NODES.items():
        h = nodes[name] = topo.host(name)
        node_ports.append(topo.link(h, server, f"{addr}/24"))
        h.route("default", ROUTER_SERVER)
        h.nft(LB_REPLY_RULES)

    backends = {}
    for name, addr in BACKENDS.items():
        h = backends[name] = topo.host(name)
        topo.link(h, server, f"{addr}/24")
        h.route("default", ROUTER_SERVER)
        dsr_backend(h, [VIP])
    attach_xdp_pass(node_ports)
    workers, pods = build_workers(topo, worker_br)
    return LabNet(topo, router, ctl, clients, nodes, backends, workers, pods)


def build_workers(topo: Topology, bridge: Bridge) -> tuple[dict[str, Host], dict[str, Host]]:
    """The Kubernetes nodes and their pods (bridged on each node, as host-gw CNIs do)."""
    workers, cni = {}, {}
    for i, (name, addr) in enumerate(WORKERS.items(), start=1):
        h = workers[name] = topo.host(name, forwarding=True)
        topo.link(h, bridge, f"{addr}/24")
        h.route("default", ROUTER_WORKERS)
        cni[name] = topo.bridge("cni0", host=h)
        h.add_address(f"10.244.{i}.1/24", cni[name].name)
    pods = {}
    for name, (worker, addr) in PODS.items():
        h = pods[name] = topo.host(name)
        topo.link(h, cni[worker], f"{addr}/24")
        h.route("default", addr.rsplit(".", 1)[0] + ".1")
    first = next(addr for _, addr in PODS.values())
    for h in workers.values():
        h.nft(worker_rules(POD_VIP, 80, first))
    return workers, pods
