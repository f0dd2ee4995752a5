"""Fixtures for the data-plane tests (root + BPF: tests/requirements.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from weir.lab.netns import Topology
from weir.nodeagent.dataplane import Dataplane, DataplaneConfig

from tests.requirements import require

from .support import PREFIX, bpffs_mount, in_netns, missing_privileges

NODE_MAC = bytes.fromhex("02000000aa01")


@pytest.fixture(scope="session")
def privileged() -> None:
    require(missing_privileges)


@dataclass
class Node:
    """A veth in its own namespace with a Weir data plane attached (generic XDP)."""

    netns: str
    bpffs: Path
    iface: str = "wdp0"

    def config(self, **sizes: int) -> DataplaneConfig:
        small = {
            "max_services": 64,
            "max_backends": 1024,
            "max_table_slots": 16 * 4096,
            "conntrack_entries": 4096,
        }
        small.update(sizes)
        return DataplaneConfig(interface=self.iface, bpffs=self.bpffs, xdp_mode="generic", **small)

    def open(self, **sizes: int) -> Dataplane:
        with in_netns(self.netns):
            return Dataplane.open(self.config(**sizes))


@pytest.fixture
def node(privileged: None) -> Iterator[Node]:
    with bpffs_mount() as fs, Topology(f"{PREFIX}-{uuid.uuid4().hex[:8]}") as topo:
        host = topo.host("node")
        host.veth("wdp0", "wdp1")
        host.run(["ip", "link", "set", "wdp0", "address", NODE_MAC.hex(":")])
        yield Node(host.name, fs)


# Conntrack room enough that a few hundred flows never fill a bucket under the node's random
# key (a full bucket leaves a new flow untracked by design): 300 flows in 16,384 buckets of
# 4 ways. The default test size (1,024 buckets) overflows one in about a hundred runs.
ROOMY = 65_536


@pytest.fixture
def dp(node: Node) -> Iterator[Dataplane]:
    d = node.open()
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def roomy_dp(node: Node) -> Iterator[Dataplane]:
    d = node.open(conntrack_entries=ROOMY)
    try:
        yield d
    finally:
        d.close()
