"""Upgrading over pinned maps of an older layout (weir.nodeagent.dataplane.migrate): the first
release's pins (layout 1: no `layout` map, 32-byte backends, two config words, four drop
reasons, conntrack placed without a key) are migrated in place by a newer agent, which
keeps every service, backend and tracked flow; pins of a newer layout are refused."""

from __future__ import annotations

import ctypes as ct
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from weir.nodeagent.dataplane import BackendTarget, Dataplane, Frontend, bpfsys, layout
from weir.nodeagent.dataplane.flowhash import ct_position
from weir.nodeagent.dataplane.inspection import ct_entries, stats
from weir.nodeagent.dataplane.migrate import DROP_REASONS_V1, BackendV1, ConfigV1
from weir.nodeagent.dataplane.model import DataplaneError
from weir.nodeagent.dataplane.pinned import possible_cpus
from weir.nodeagent.maglev import backend_id, build_table

from .conftest import NODE_MAC, Node
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


def _replace(pin: Path, fd: int) -> None:
    pin.unlink()
    bpfsys.obj_pin(fd, str(pin))
    os.close(fd)


def downgrade_to_first_release(pins: Path, ncpu: int) -> None:
    """Rewrite a closed data plane's pins the way the first release left them."""
    fds = {
        n: bpfsys.obj_get(str(pins / n)) for n in ("backends", "config", "drop_stats", "conntrack")
    }
    try:
        # backends: the 32-byte entries (a prefix of today's)
        size = ct.sizeof(layout.Backend)
        count = bpfsys.map_info(fds["backends"]).max_entries
        keys, values, _ = bpfsys.lookup_batch_raw(fds["backends"], 4, size, chunk=16384)
        old = bpfsys.map_create_array(ct.sizeof(BackendV1), count, "backends")
        for i, idx in enumerate(np.frombuffer(keys, dtype=np.uint32).tolist()):
            entry = BackendV1.from_buffer_copy(values[i * size : i * size + ct.sizeof(BackendV1)])
            bpfsys.update(old, ct.c_uint32(idx), entry)
        # config: node MAC and seed only
        cfg = layout.Config()
        bpfsys.lookup(fds["config"], ct.c_uint32(0), cfg)
        old_cfg = bpfsys.map_create_array(ct.sizeof(ConfigV1), 1, "config")
        bpfsys.update(old_cfg, ct.c_uint32(0), ConfigV1(cfg.node_mac, cfg.seed))
        # drop_stats: four reasons
        old_drops = bpfsys.map_create_array(24, DROP_REASONS_V1, "drop_stats", per_cpu=True)
        buf = ct.create_string_buffer(24 * ncpu)
        for reason in range(DROP_REASONS_V1):
            bpfsys.lookup(fds["drop_stats"], ct.c_uint32(reason), buf)
            bpfsys.update(old_drops, ct.c_uint32(reason), buf)
        # conntrack: every flow at its unkeyed place
        buckets = bpfsys.map_info(fds["conntrack"]).max_entries
        bytes_ = buckets * ct.sizeof(layout.CtBucket)
        mm = bpfsys.map_mmap(fds["conntrack"], bytes_, writable=False)
        view = np.frombuffer(mm, dtype=np.uint64, count=buckets * 8)
        table = view.reshape(buckets, 8).copy()
        del view
        mm.close()
        old_ct = bpfsys.map_create_array(64, buckets, "conntrack", mmapable=True)
        out_mm = bpfsys.map_mmap(old_ct, bytes_, writable=True)
        out = np.frombuffer(out_mm, dtype=np.uint64, count=buckets * 8).reshape(buckets, 8)
        for e in ct_entries_of(table, cfg.ct_key):
            bucket, fp = ct_position(e[0], VIP, e[1], 80, 6, 0, buckets)
            way = next(w for w in range(4) if not out[bucket, w])
            out[bucket, way] = (fp << layout.CT_FP_SHIFT) | e[2]
            out[bucket, 4 + way] = e[3]
        del out
        out_mm.close()
    finally:
        for fd in fds.values():
            os.close(fd)
    _replace(pins / "backends", old)
    _replace(pins / "config", old_cfg)
    _replace(pins / "drop_stats", old_drops)
    _replace(pins / "conntrack", old_ct)
    for name in ("layout", "ct_stats", "ct_guard"):
        (pins / name).unlink()


def ct_entries_of(table: np.ndarray, key: int) -> list[tuple[str, int, int, int]]:
    """(client, client port, handle, client record word) of every tracked flow."""
    out = []
    records = table[:, 4:].copy().view(np.uint8).reshape(len(table), 4, 8)
    for bucket, way in np.argwhere(table[:, :4] != 0).tolist():
        raw = bytes(records[bucket, way])
        client, cport = socket.inet_ntoa(raw[:4]), int.from_bytes(raw[4:6], "big")
        word = int(table[bucket, way])
        assert ct_position(client, VIP, cport, 80, 6, key, len(table))[0] == bucket
        record = int(np.frombuffer(raw[:6] + b"\0\0", dtype=np.uint64)[0])
        out.append((client, cport, word & layout.CT_HANDLE_MASK, record))
    return out


def backend_of(dp: Dataplane, flow: Flow) -> bytes:
    action, out = run_xdp(dp.xdp_prog_fd, packet(flow, NODE_MAC))
    assert action == XDP_TX
    return out[:6]


# Room enough that no bucket of the new, randomly keyed placement overflows (a full bucket
# would lose a flow by design, counted in flows_lost): 300 flows in 16,384 buckets of 4 ways.
ROOMY = 65_536


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
    downgrade_to_first_release(node.bpffs, possible_cpus())

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
    downgrade_to_first_release(node.bpffs, possible_cpus())
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
