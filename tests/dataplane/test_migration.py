"""Upgrading over pinned maps of an older layout (weir.nodeagent.dataplane.migrate): the first
release's pins (layout 1: no `layout` map, 32-byte backends, two config words, four drop
reasons, conntrack placed without a key) and those of layouts 2 and 3 (conntrack placed by
lookup3) are migrated in place by a newer agent, which keeps every service, backend and tracked
flow; pins of a newer layout are refused."""

from __future__ import annotations

import ctypes as ct
import os

import pytest
from weir.nodeagent.dataplane import BackendTarget, Dataplane, Frontend, bpfsys, layout
from weir.nodeagent.dataplane.inspection import ct_entries, stats
from weir.nodeagent.dataplane.model import DataplaneError
from weir.nodeagent.dataplane.pinned import possible_cpus
from weir.nodeagent.maglev import backend_id, build_table

from .conftest import NODE_MAC, ROOMY, Node
from .first_release import downgrade_to_first_release, downgrade_to_layout_3
from .support import XDP_DROP, XDP_TX, Flow, packet, run_xdp

SEED = 0x5EED
VIP = "10.0.0.10"
FE = Frontend(f"{VIP}:80/TCP", VIP, 80, 6)
BACKENDS = [BackendTarget(f"10.1.0.{i}", 8080, bytes([2, 0, 0, 0xBE, 0, i])) for i in range(1, 5)]


def flows(count: int) -> list[Flow]:
    return [Flow(f"172.16.{i >> 8}.{i & 255}", VIP, 20000 + i, 80) for i in range(count)]


def program(dp: Dataplane, bes: list[BackendTarget]) -> None:
    ids = [backend_id(b.address, b.port, "TCP") for b in bes]
    dp.apply_service(FE, bes, build_table(ids, 251, seed=SEED))


def backend_of(dp: Dataplane, flow: Flow) -> bytes:
    action, out = run_xdp(dp.xdp_prog_fd, packet(flow, NODE_MAC))
    assert action == XDP_TX
    return out[:6]


def test_the_first_releases_pins_are_migrated_with_their_flows(node: Node) -> None:
    dp = node.open(conntrack_entries=ROOMY)
    dp.set_seed(SEED)
    program(dp, BACKENDS)
    tracked = flows(300)
    before = {f: backend_of(dp, f) for f in tracked}
    assert (
        run_xdp(dp.xdp_prog_fd, packet(Flow("172.16.9.9", VIP, 1, 80), NODE_MAC, frag=0x10))[0]
        == XDP_DROP
    )
    dp.close()
    downgrade_to_first_release(node.bpffs, possible_cpus(), (VIP, 80, 6))

    dp = node.open(conntrack_entries=ROOMY)
    try:
        report = dp.migrated
        assert report is not None and report.from_version == 1
        assert report.backends == len(BACKENDS) and report.flows == 300 and report.flows_lost == 0
        assert dp.maps.layout_version() == layout.LAYOUT_VERSION
        assert dp.maps.config().ct_key != 0  # keyed from now on
        assert not any(p.name.endswith("_v1") for p in node.bpffs.iterdir())
        (svc,) = dp.applied().values()
        assert svc.backends == tuple(sorted(BACKENDS))
        # The backend set changes: tracked flows keep their backend (their entries came
        # over, at their new places); only untracked ones would follow the new table.
        program(dp, BACKENDS[:3])
        moved = [
            f for f in tracked if before[f] != BACKENDS[3].mac and backend_of(dp, f) != before[f]
        ]
        assert moved == []
        assert ct_entries(dp.maps)[1] >= 300
        drops = {d.name: d.packets for d in stats(dp.maps)[1]}
        assert drops["fragment"] == 1  # counters came over too
    finally:
        dp.close()


def test_an_interrupted_migration_resumes(node: Node) -> None:
    dp = node.open()
    dp.set_seed(SEED)
    program(dp, BACKENDS)
    for f in flows(50):
        backend_of(dp, f)
    dp.close()
    downgrade_to_first_release(node.bpffs, possible_cpus(), (VIP, 80, 6))
    # An agent killed right after renaming two of the maps.
    for name in ("backends", "config"):
        os.rename(node.bpffs / name, node.bpffs / f"{name}_v1")
    dp = node.open()
    try:
        assert dp.migrated is not None and dp.migrated.flows == 50
        assert len(dp.applied()) == 1
    finally:
        dp.close()


def test_pins_of_a_newer_layout_are_refused(node: Node) -> None:
    dp = node.open()
    bpfsys.update(dp.maps.fds["layout"], ct.c_uint32(0), ct.c_uint64(layout.LAYOUT_VERSION + 1))
    dp.close()
    with pytest.raises(DataplaneError, match="newer than this agent"):
        node.open()


@pytest.mark.parametrize("version", [2, 3])
def test_layout_2_and_3_pins_are_migrated_with_their_flows_and_config(
    node: Node, version: int
) -> None:
    """Layouts 2 and 3 placed flows in conntrack by lookup3: the maps and the conntrack secret
    stay, the flows move to their places under this layout's hash (version 3 only added the
    flow log's ring buffer, and its rate in config bits that were always 0)."""
    dp = node.open(conntrack_entries=ROOMY)
    dp.set_seed(SEED)
    program(dp, BACKENDS)
    tracked = flows(100)
    before = {f: backend_of(dp, f) for f in tracked}
    cfg = dp.maps.config()
    dp.close()
    downgrade_to_layout_3(node.bpffs, (VIP, 80, 6))
    if version == 2:
        fd = bpfsys.obj_get(str(node.bpffs / "layout"))
        bpfsys.update(fd, ct.c_uint32(0), ct.c_uint64(2))
        os.close(fd)
        (node.bpffs / layout.FLOW_LOG).unlink()  # layout 2 had none

    dp = node.open(conntrack_entries=ROOMY)
    try:
        assert dp.migrated is not None and dp.migrated.from_version == version
        assert dp.migrated.flows == 100 and dp.migrated.flows_lost == 0
        assert dp.maps.layout_version() == layout.LAYOUT_VERSION
        after = dp.maps.config()
        assert (after.ct_key, after.seed, after.node_mac) == (cfg.ct_key, cfg.seed, cfg.node_mac)
        assert (node.bpffs / layout.FLOW_LOG).exists()
        assert not any(p.name.endswith(f"_v{version}") for p in node.bpffs.iterdir())
        program(dp, BACKENDS[:3])  # tracked flows keep their backends: their entries moved
        moved = [
            f for f in tracked if before[f] != BACKENDS[3].mac and backend_of(dp, f) != before[f]
        ]
        assert moved == []
    finally:
        dp.close()
