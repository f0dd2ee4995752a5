"""The parts hosts play around a load balancer, and the veth stand-ins for what a physical
network does on its own."""

from __future__ import annotations

from collections.abc import Iterable

from weir.lab.netns import Host, sh


def dsr_backend(host: Host, vips: Iterable[str], iface: str = "eth0") -> None:
    """A Direct Server Return backend: it holds the VIPs on its loopback (so it accepts
    their packets and answers from them) and never answers ARP for them on the LAN
    (arp_ignore=1, arp_announce=2), which would steal the LB nodes' traffic."""
    for vip in vips:
        host.add_address(f"{vip}/32", "lo")
    host.sysctl(
        {
            f"net.ipv4.conf.{dev}.{key}": value
            for key, value in (("arp_ignore", 1), ("arp_announce", 2))
            for dev in ("all", iface)
        }
    )


def finish_checksums(host: Host, iface: str = "eth0") -> None:
    """A veth hands TCP segments on with partial checksums, which an LB node's native XDP_TX
    would pass on unfinished (a NIC or a router would have completed them): the sender
    finishes them itself."""
    host.run(["ethtool", "-K", iface, "tx", "off"])


def no_flood(port: str) -> None:
    """A real NIC drops unicast frames for another MAC before XDP sees them; a veth does not.
    Without this, frames for a dead node's MAC (flooded once the bridge forgets it) would be
    forwarded by the surviving nodes' XDP, hiding the failure."""
    sh(["bridge", "link", "set", "dev", port, "flood", "off"])


def attach_xdp_pass(ports: Iterable[str]) -> None:
    """Native XDP_TX on a veth hands the frame to the peer's XDP receive path, which only runs
    when the peer has an XDP program too: the bridge-side ends (root namespace) get a
    pass-through one, attached until the veth is deleted (a physical NIC needs nothing of
    the kind)."""
    from bcc import BPF

    bpf = BPF(text=b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = bpf.load_func(b"xdp_pass", BPF.XDP)
    for dev in ports:
        bpf.attach_xdp(dev.encode(), fn, 0)
    bpf.cleanup()
