"""The LB node's segment for the agent tests: one bridge, the node and two backends."""

from __future__ import annotations

from weir.lab.netns import Host, Topology


def lb_segment(t: Topology, net: str) -> tuple[Host, Host, Host]:
    """Hosts lb (net.1), b1 (net.11) and b2 (net.12), each on eth0 with a /24, one bridge."""
    br = t.bridge("br")
    hosts = []
    for name, last in (("lb", 1), ("b1", 11), ("b2", 12)):
        host = t.host(name)
        t.link(host, br, f"{net}.{last}/24")
        hosts.append(host)
    lb, b1, b2 = hosts
    return lb, b1, b2
