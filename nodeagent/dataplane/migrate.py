"""Pinned maps of an older agent: which layout they have, and bringing them to this one.

An upgrade must not interrupt forwarding nor forget tracked flows, and an agent must never
adopt maps whose layout it does not know (bpf/weir_maps.h, `layout`: version 1 is the first
release's, which had no `layout` map). Versions 2 and 3 differ from this one (4) only in where
conntrack places a flow (version 4's keyed hash is cheaper; version 3 added the flow log's ring
buffer, made anew when missing, and its sampling rate in config bits that were always 0): only
conntrack is made anew and its flows moved, with the same secret. From version 1, more maps:

  prepare()  before the program is compiled: the maps whose layout changed are renamed
             `<name>_v<version>` (the old program, still attached, keeps using them), so the
             compile creates them anew in this layout; the others are adopted as they are;
  finish()   once the new maps exist, before the new program is attached: the old content is
             copied over in the new layout (services, backends, conntrack with each flow
             moved to its place under the new keyed hash, counters), the version recorded,
             and the old pins removed.

Then the new program replaces the old one atomically (loader.attach). Flows the old program
started between the copy and the replace are picked again by Maglev: same backend while the
table is unchanged. An agent interrupted half way resumes from the renamed pins. Pins of a
newer layout are refused: a downgrade means removing the pins (tracked flows go).
"""

from __future__ import annotations

import ctypes as ct
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy
from weir.common.logs import get_logger
from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.flowhash import ct_position, ct_position_lookup3
from weir.nodeagent.dataplane.model import DataplaneError
from weir.nodeagent.dataplane.pinned import PinnedMaps, ip_of, port_of

log = get_logger("weir.agent.dataplane")

FIRST_RELEASE = 1


class BackendV1(ct.Structure):
    _fields_ = [
        ("handle", ct.c_uint64),
        ("svc_key", layout.SvcKey),
        ("mac", ct.c_uint8 * 6),
        ("port_be", ct.c_uint16),
        ("addr_be", ct.c_uint32),
        ("svc", ct.c_uint32),
    ]


class ConfigV1(ct.Structure):
    _fields_ = [("node_mac", ct.c_uint64), ("seed", ct.c_uint64)]


# The maps whose layout changed from version 1 (renamed, made anew, copied over).
CHANGED_SINCE_V1 = ("backends", "config", "drop_stats", "conntrack")
# From versions 2 and 3: conntrack's placement (the keyed hash) only.
CHANGED_SINCE_V3 = ("conntrack",)
DROP_REASONS_V1 = 4


@dataclass(frozen=True)
class Migration:
    pin_dir: Path
    from_version: int

    def old(self, name: str) -> Path:
        return self.pin_dir / f"{name}_v{self.from_version}"


@dataclass(frozen=True)
class Report:
    from_version: int
    backends: int
    flows: int  # tracked flows carried over
    flows_lost: int  # not carried: their bucket was full in the new placement, or unreadable


def pinned_version(pin_dir: Path) -> int | None:
    """The layout version of the pins under pin_dir; None when there are none."""
    if any((pin_dir / f"{name}_v{FIRST_RELEASE}").exists() for name in CHANGED_SINCE_V1):
        return FIRST_RELEASE  # a migration was interrupted: resume it
    if (pin_dir / "layout").exists():
        value = ct.c_uint64()
        fd = _open(pin_dir / "layout")
        try:
            bpfsys.lookup(fd, ct.c_uint32(0), value)
        finally:
            os.close(fd)
        return value.value or None  # 0: made by a compile that never finished the open
    if any((pin_dir / name).exists() for name in layout.MAPS):
        return FIRST_RELEASE
    return None


def prepare(pin_dir: Path) -> Migration | None:
    """Rename the maps an older layout must not keep; None when nothing is to migrate."""
    version = pinned_version(pin_dir)
    if version is None or version == layout.LAYOUT_VERSION:
        return None
    if version > layout.LAYOUT_VERSION:
        raise DataplaneError(
            f"the pins under {pin_dir} have layout {version}, newer than this agent's "
            f"{layout.LAYOUT_VERSION}: run the newer agent, or remove the pins to start "
            f"afresh (this drops tracked flows)"
        )
    migration = Migration(pin_dir, version)
    for name in _changed_since(version):
        if (pin_dir / name).exists() and not migration.old(name).exists():
            os.rename(pin_dir / name, migration.old(name))
    log.info("migrating pinned maps", pin_dir=str(pin_dir), layout=version,
             to=layout.LAYOUT_VERSION)  # fmt: skip
    return migration


def _changed_since(version: int) -> tuple[str, ...]:
    return CHANGED_SINCE_V1 if version == FIRST_RELEASE else CHANGED_SINCE_V3


def old_capacities(migration: Migration) -> dict[str, int]:
    """max_entries of the renamed maps, by their names (the new ones get the same)."""
    sizes = {}
    for name in CHANGED_SINCE_V1:
        path = migration.old(name)
        if path.exists():
            fd = _open(path)
            try:
                sizes[name] = bpfsys.map_info(fd).max_entries
            finally:
                os.close(fd)
    return sizes


def finish(migration: Migration, maps: PinnedMaps) -> Report:
    """Copy the renamed maps into the new ones, record the version, remove the old pins."""
    backends = 0
    if migration.from_version == FIRST_RELEASE:
        old_key, key = 0, fresh_key()  # the first release placed flows without a key
        backends = _copy_backends(migration, maps)
        _copy_config(migration, maps, key)
        _copy_drops(migration, maps)
    else:
        old_key = key = maps.config().ct_key  # adopted with the config: flows keep it
    flows, lost = _move_conntrack(migration, maps, old_key, key)
    record_version(maps)
    for name in CHANGED_SINCE_V1:
        migration.old(name).unlink(missing_ok=True)
    report = Report(migration.from_version, backends, flows, lost)
    log.info("pinned maps migrated", **report.__dict__)
    return report


def record_version(maps: PinnedMaps) -> None:
    bpfsys.update(maps.fds["layout"], ct.c_uint32(0), ct.c_uint64(layout.LAYOUT_VERSION))


def _open(path: Path) -> int:
    try:
        return bpfsys.obj_get(str(path))
    except OSError as exc:
        raise DataplaneError(f"cannot open pinned map {path}: {exc}") from exc


def _copy_backends(migration: Migration, maps: PinnedMaps) -> int:
    path = migration.old("backends")
    if not path.exists():
        return 0
    fd = _open(path)
    try:
        size = ct.sizeof(BackendV1)
        keys, values, _ = bpfsys.lookup_batch_raw(fd, 4, size, chunk=16384)
    finally:
        os.close(fd)
    index = numpy.frombuffer(keys, dtype=numpy.uint32)
    written = [(int(i), BackendV1.from_buffer_copy(values[n * size : (n + 1) * size]))
               for n, i in enumerate(index)]  # fmt: skip
    written = [(i, b) for i, b in written if b.svc_key.vip_be]  # ever written
    if written:
        keys_out = (ct.c_uint32 * len(written))(*(i for i, _ in written))
        values_out = (layout.Backend * len(written))()
        for out, (_, old) in zip(values_out, written, strict=True):
            ct.memmove(ct.addressof(out), ct.addressof(old), size)  # a prefix of the new layout
        bpfsys.update_batch(maps.fds["backends"], keys_out, values_out, len(written))
    return len(written)


def _copy_config(migration: Migration, maps: PinnedMaps, ct_key: int) -> None:
    new = layout.Config(ct_key=ct_key)
    path = migration.old("config")
    if path.exists():
        fd = _open(path)
        try:
            old = ConfigV1()
            bpfsys.lookup(fd, ct.c_uint32(0), old)
        finally:
            os.close(fd)
        new.node_mac, new.seed = old.node_mac, old.seed
    bpfsys.update(maps.fds["config"], ct.c_uint32(0), new)


def _copy_drops(migration: Migration, maps: PinnedMaps) -> None:
    path = migration.old("drop_stats")
    if not path.exists():
        return
    fd = _open(path)
    try:
        buf = ct.create_string_buffer(ct.sizeof(layout.Counters) * maps.ncpu)
        for reason in range(DROP_REASONS_V1):
            if bpfsys.lookup(fd, ct.c_uint32(reason), buf):
                bpfsys.update(maps.fds["drop_stats"], ct.c_uint32(reason), buf)
    finally:
        os.close(fd)


def _move_conntrack(
    migration: Migration, maps: PinnedMaps, old_key: int, key: int
) -> tuple[int, int]:
    """Every tracked flow of the old table (placed by lookup3 under old_key), at its place
    under this layout's hash and key. The flow's 5-tuple is its client record plus its
    backend's service; a record that does not hash to where it sits (torn, or another
    flow's) is not carried."""
    path = migration.old("conntrack")
    if not path.exists():
        return 0, 0
    fd = _open(path)
    try:
        buckets = bpfsys.map_info(fd).max_entries
        mm = bpfsys.map_mmap(fd, buckets * ct.sizeof(layout.CtBucket), writable=False)
    finally:
        os.close(fd)
    try:
        view = numpy.frombuffer(mm, dtype=numpy.uint64, count=buckets * 8)
        old = view.reshape(buckets, 8).copy()
        del view  # the mapping closes only once no array looks into it
    finally:
        mm.close()
    return _rehash(old, maps, old_key, key)


def _rehash(old: numpy.ndarray, maps: PinnedMaps, old_key: int, key: int) -> tuple[int, int]:
    new = maps.conntrack()
    buckets = len(new)
    ways = layout.CT_WAYS
    clients = old[:, ways:].copy().view(numpy.uint8).reshape(len(old), ways, 8)
    services: dict[int, tuple[str, int, int]] = {}
    moved = lost = 0
    for bucket, way in numpy.argwhere(old[:, :ways] != 0).tolist():
        word = int(old[bucket, way])
        handle = word & layout.CT_HANDLE_MASK
        index = handle & layout.BE_INDEX_MASK
        if index not in services:
            sk = maps.backend(index).svc_key
            services[index] = (ip_of(sk.vip_be), port_of(sk.port_be), sk.proto)
        vip, vport, proto = services[index]
        raw = bytes(clients[bucket, way])
        client, cport = socket.inet_ntoa(raw[:4]), int.from_bytes(raw[4:6], "big")
        if ct_position_lookup3(client, vip, cport, vport, proto, old_key, len(old)) != (
            bucket,
            word >> layout.CT_FP_SHIFT,
        ):
            lost += 1
            continue
        nb, fp = ct_position(client, vip, cport, vport, proto, key, buckets)
        free = [w for w in range(ways) if not new[nb, w]]
        if not free:
            lost += 1
            continue
        new[nb, free[0]] = (fp << layout.CT_FP_SHIFT) | handle
        record = numpy.frombuffer(raw[:6] + b"\0\0", dtype=numpy.uint64)[0]
        new[nb, ways + free[0]] = record
        moved += 1
    return moved, lost


def fresh_key() -> int:
    """A conntrack secret: random, never 0 (0 is the unkeyed placement of version 1)."""
    return int.from_bytes(os.urandom(8), sys.byteorder) or 1
