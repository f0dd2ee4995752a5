"""The first release's pinned maps (layout 1: no `layout` map, 32-byte backends, two config
words, four drop reasons, conntrack placed without a key), made from a newer data plane's
pins: what an upgrade from that release finds (tests/dataplane/test_migration.py, and under
traffic tests/e2e/test_dataplane_e2e.py).

    downgrade_to_first_release(pin_dir, possible_cpus(), ("10.0.0.10", 80, 6))
"""

from __future__ import annotations

import ctypes as ct
import os
import socket
from pathlib import Path

import numpy as np
from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.flowhash import ct_position, ct_position_lookup3
from weir.nodeagent.dataplane.migrate import DROP_REASONS_V1, BackendV1, ConfigV1


def _replace(pin: Path, fd: int) -> None:
    pin.unlink()
    bpfsys.obj_pin(fd, str(pin))
    os.close(fd)


def downgrade_to_first_release(pins: Path, ncpu: int, service: tuple[str, int, int]) -> None:
    """Rewrite a data plane's pins the way the first release left them; service is the
    (VIP, port, protocol) of every tracked flow. The program still attached (if any) keeps
    the maps it has: forwarding goes on while the pins are of the first release."""
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
        old_ct = lookup3_conntrack(fds["conntrack"], cfg.ct_key, 0, service)
    finally:
        for fd in fds.values():
            os.close(fd)
    _replace(pins / "backends", old)
    _replace(pins / "config", old_cfg)
    _replace(pins / "drop_stats", old_drops)
    _replace(pins / "conntrack", old_ct)
    for name in ("layout", "ct_stats", "ct_guard", "flow_skip"):
        (pins / name).unlink()


def downgrade_to_layout_3(pins: Path, service: tuple[str, int, int]) -> None:
    """Rewrite a data plane's pins the way layout 3 left them: the same maps, with every
    tracked flow (of service) placed by lookup3 under the same secret."""
    fds = {n: bpfsys.obj_get(str(pins / n)) for n in ("config", "conntrack", "layout")}
    try:
        cfg = layout.Config()
        bpfsys.lookup(fds["config"], ct.c_uint32(0), cfg)
        old_ct = lookup3_conntrack(fds["conntrack"], cfg.ct_key, cfg.ct_key, service)
        bpfsys.update(fds["layout"], ct.c_uint32(0), ct.c_uint64(3))
    finally:
        for fd in fds.values():
            os.close(fd)
    _replace(pins / "conntrack", old_ct)
    (pins / "flow_skip").unlink()  # new in layout 4


def lookup3_conntrack(fd: int, key: int, old_key: int, service: tuple[str, int, int]) -> int:
    """A new conntrack map (its fd) holding the flows of the one at fd (placed under key)
    where layouts 1 to 3 placed them: by lookup3 under old_key."""
    vip, port, proto = service
    buckets = bpfsys.map_info(fd).max_entries
    bytes_ = buckets * ct.sizeof(layout.CtBucket)
    mm = bpfsys.map_mmap(fd, bytes_, writable=False)
    view = np.frombuffer(mm, dtype=np.uint64, count=buckets * 8)
    table = view.reshape(buckets, 8).copy()
    del view
    mm.close()
    old_ct = bpfsys.map_create_array(64, buckets, "conntrack", mmapable=True)
    out_mm = bpfsys.map_mmap(old_ct, bytes_, writable=True)
    out = np.frombuffer(out_mm, dtype=np.uint64, count=buckets * 8).reshape(buckets, 8)
    for e in ct_entries_of(table, key, service):
        bucket, fp = ct_position_lookup3(e[0], vip, e[1], port, proto, old_key, buckets)
        way = next(w for w in range(4) if not out[bucket, w])
        out[bucket, way] = (fp << layout.CT_FP_SHIFT) | e[2]
        out[bucket, 4 + way] = e[3]
    del out
    out_mm.close()
    return old_ct


def ct_entries_of(
    table: np.ndarray, key: int, service: tuple[str, int, int]
) -> list[tuple[str, int, int, int]]:
    """(client, client port, handle, client record word) of every tracked flow."""
    vip, port, proto = service
    out = []
    records = table[:, 4:].copy().view(np.uint8).reshape(len(table), 4, 8)
    for bucket, way in np.argwhere(table[:, :4] != 0).tolist():
        raw = bytes(records[bucket, way])
        client, cport = socket.inet_ntoa(raw[:4]), int.from_bytes(raw[4:6], "big")
        word = int(table[bucket, way])
        assert ct_position(client, vip, cport, port, proto, key, len(table))[0] == bucket
        record = int(np.frombuffer(raw[:6] + b"\0\0", dtype=np.uint64)[0])
        out.append((client, cport, word & layout.CT_HANDLE_MASK, record))
    return out
