"""The attachment checks against the kernel (nodeagent.attachment): our XDP program and the
backend role's tc programs told from another tool's by their pins, put back from them where
nothing is attached, never over another program."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from weir.lab import bpffs
from weir.lab.netns import Topology, cleanup_prefix, in_netns
from weir.nodeagent.attachment import TcAttachment, XdpAttachment
from weir.nodeagent.dataplane import Dataplane, DataplaneConfig, DataplaneError, bpfsys, loader
from weir.nodeagent.dataplane.nat import PROG_PINS, TC_HANDLE, NatConfig, NatDataplane

from tests.requirements import requires, root

pytestmark = [pytest.mark.root, requires(root)]

PREFIX = "wat"
IFACE = "eth0"


@dataclass
class Node:
    netns: str
    pins: Path

    def ifindex(self) -> int:
        return loader.interface_index(IFACE)


@pytest.fixture
def node() -> Iterator[Node]:
    cleanup_prefix(PREFIX)
    with bpffs.mounted(PREFIX) as top, Topology(PREFIX) as topo:
        host = topo.host("lb")
        topo.link(host, topo.bridge("br"), "10.79.0.1/24")
        yield Node(host.name, top / "weir")


def foreign(kind: str) -> int:
    """A pass-everything program of another tool, loaded; its fd (kept open by bcc until
    the process ends, which is fine for a test)."""
    from bcc import BPF

    if kind == "xdp":
        bpf = BPF(text=b"int other(struct xdp_md *ctx) { return XDP_PASS; }")
        return bpf.load_func(b"other", BPF.XDP).fd
    bpf = BPF(text=b"int other(struct __sk_buff *skb) { return -1; }")
    return bpf.load_func(b"other", BPF.SCHED_CLS).fd


def test_xdp_detached_is_put_back_and_another_program_is_left_alone(node: Node) -> None:
    with in_netns(node.netns):
        dp = Dataplane.open(
            DataplaneConfig(
                interface=IFACE,
                bpffs=node.pins,
                xdp_mode="generic",
                max_services=8,
                max_backends=64,
                max_table_slots=4096,
                conntrack_entries=1024,
            )
        )
        try:
            probe = XdpAttachment(dp)
            assert probe.check().ok
            ours = bpfsys.xdp_query(node.ifindex()).prog_id

            bpfsys.xdp_detach(node.ifindex(), bpfsys.XDP_FLAGS_SKB_MODE)
            gone = probe.check()
            assert (gone.problem, gone.missing) == (f"no XDP program on {IFACE}", True)
            probe.reattach()
            assert probe.check().ok and bpfsys.xdp_query(node.ifindex()).prog_id == ours

            other = foreign("xdp")  # in ours' place, as `ip link set ... xdpgeneric` would
            mode = bpfsys.XDP_FLAGS_SKB_MODE
            bpfsys.xdp_attach(node.ifindex(), other, mode, old_prog_fd=dp.xdp_prog_fd)
            theirs = bpfsys.xdp_query(node.ifindex()).prog_id
            found = probe.check()
            assert not found.ok and not found.missing
            assert f"another XDP program (id {theirs})" in found.problem
            with pytest.raises(DataplaneError):
                probe.reattach()  # never over another program
            assert bpfsys.xdp_query(node.ifindex()).prog_id == theirs
        finally:
            dp.close(detach=True)
            bpfsys.xdp_detach(node.ifindex(), bpfsys.XDP_FLAGS_SKB_MODE)


def test_tc_programs_detached_are_put_back_and_another_is_left_alone(node: Node) -> None:
    with in_netns(node.netns):
        nat = NatDataplane.open(NatConfig(interface=IFACE, bpffs=node.pins))
        try:
            probe = TcAttachment(nat)
            assert probe.check().ok
            (ingress_pin, point, priority) = next(iter(PROG_PINS.values()))
            ours = bpfsys.tc_query(node.ifindex(), point, TC_HANDLE, priority)

            bpfsys.tc_detach(node.ifindex(), point, TC_HANDLE, priority)
            gone = probe.check()
            assert gone.missing and f"no tc program at {ingress_pin}'s place" in gone.problem
            probe.reattach()
            assert probe.check().ok
            assert bpfsys.tc_query(node.ifindex(), point, TC_HANDLE, priority) == ours

            bpfsys.tc_attach(node.ifindex(), point, foreign("tc"), TC_HANDLE, priority)
            theirs = bpfsys.tc_query(node.ifindex(), point, TC_HANDLE, priority)
            found = probe.check()
            assert not found.ok and not found.missing
            assert f"another tc program (id {theirs})" in found.problem
        finally:
            nat.detach()
