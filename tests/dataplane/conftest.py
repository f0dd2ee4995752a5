"""Fixtures for the data-plane tests (root + BPF: tests/requirements.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from weir.lab.netns import Topology
from weir.nodeagent.dataplane import Dataplane, DataplaneConfig

from tests.requirements import require

from .support import PREFIX, bpffs_mount, in_netns, missing_privileges, reset

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

    @contextlib.contextmanager
    def opened(self, **sizes: int) -> Iterator[Dataplane]:
        """open(), closed (not detached) afterwards, even on failure."""
        d = self.open(**sizes)
        try:
            yield d
        finally:
            d.close()


@contextlib.contextmanager
def new_node() -> Iterator[Node]:
    """A node, its namespace and bpffs removed afterwards (even on failure)."""
    with bpffs_mount() as fs, Topology(f"{PREFIX}-{uuid.uuid4().hex[:8]}") as topo:
        host = topo.host("node")
        host.veth("wdp0", "wdp1")
        host.run(["ip", "link", "set", "wdp0", "address", NODE_MAC.hex(":")])
        yield Node(host.name, fs)


@pytest.fixture
def node(privileged: None) -> Iterator[Node]:
    """A node of the test's own, for tests that open (and reopen) their data planes."""
    with new_node() as n:
        yield n


# Conntrack room enough that a few hundred flows never fill a bucket under the node's random
# key (a full bucket leaves a new flow untracked by design): 300 flows in 16,384 buckets of
# 4 ways. The default test size (1,024 buckets) overflows one in about a hundred runs.
ROOMY = 65_536


@pytest.fixture(scope="session")
def shared_node(privileged: None) -> Iterator[Node]:
    with new_node() as n:
        yield n


@pytest.fixture(scope="session")
def shared_dp(shared_node: Node) -> Iterator[Dataplane]:
    with shared_node.opened() as d:
        yield d


@pytest.fixture
def dp(shared_dp: Dataplane) -> Dataplane:
    """A data plane of the default sizes as a fresh open leaves it: one compiled and
    attached once for the session and reset before each test (compiling takes seconds).
    Tests that close it, or change its node, take fresh_dp."""
    reset(shared_dp)
    return shared_dp


@pytest.fixture
def dp_node(dp: Dataplane, shared_node: Node) -> Node:
    """The node dp runs on (its bpffs, its namespace)."""
    return shared_node


@pytest.fixture
def fresh_dp(node: Node) -> Iterator[Dataplane]:
    """A data plane opened for this test alone, on its own node."""
    with node.opened() as d:
        yield d


@pytest.fixture
def roomy_dp(node: Node) -> Iterator[Dataplane]:
    with node.opened(conntrack_entries=ROOMY) as d:
        yield d
