"""Open Weir's pinned maps by path and read them (no compiler needed).

Shared by the agent (adoption, applied()) and by weirctl. The slot pool and the
conntrack table are BPF_F_MMAPABLE arrays, read (and by the agent, written) through a
shared mapping as numpy arrays.
"""

from __future__ import annotations

import ctypes as ct
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy
from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.model import BackendTarget, DataplaneError


def possible_cpus() -> int:
    """The kernel's num_possible_cpus(): per-CPU map values come in that many copies."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def ip_of(raw: int) -> str:
    """A network-order address stored in a host-order integer field, as text."""
    return socket.inet_ntoa(raw.to_bytes(4, sys.byteorder))


def port_of(raw: int) -> int:
    return socket.ntohs(raw)


@dataclass(frozen=True)
class ServiceRecord:
    key: bytes
    vip: str
    port: int
    proto: int
    index: int
    word: int
    meta: layout.SvcMeta


@dataclass(frozen=True)
class BackendRecord:
    index: int
    entry: layout.Backend
    meta: layout.BeMeta

    @property
    def address(self) -> str:
        return ip_of(self.entry.addr_be)

    @property
    def port(self) -> int:
        return port_of(self.entry.port_be)

    @property
    def mac(self) -> bytes:
        return bytes(self.entry.mac)

    @property
    def node(self) -> str:
        """The node an encapsulated backend is reached through ("" for L2 DSR)."""
        return ip_of(self.entry.node_be) if self.entry.flags & layout.BE_F_ENCAP else ""

    @property
    def target(self) -> BackendTarget:
        return BackendTarget(self.address, self.port, self.mac, self.node)


class PinnedMaps:
    """File descriptors of every pinned map under one bpffs directory."""

    def __init__(self, directory: Path, writable: bool = False) -> None:
        """writable: map the slot pool read-write (the agent); weirctl only reads."""
        self.directory = Path(directory)
        self.writable = writable
        self.fds: dict[str, int] = {}
        self.info: dict[str, bpfsys.MapInfo] = {}
        self._mmaps: dict[str, object] = {}
        self._views: dict[str, numpy.ndarray] = {}
        try:
            for name in layout.MAPS:
                fd = bpfsys.obj_get(str(self.directory / name))
                self.fds[name] = fd
                self.info[name] = bpfsys.map_info(fd)
        except OSError as exc:
            self.close()
            raise DataplaneError(f"cannot open the Weir maps under {directory}: {exc}") from exc
        self.ncpu = possible_cpus()

    def close(self) -> None:
        self._views.clear()
        for mm in self._mmaps.values():
            try:
                mm.close()  # type: ignore[attr-defined]
            except BufferError:
                pass  # a caller still holds a view: the mapping goes when it does
        self._mmaps.clear()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def capacity(self, name: str) -> int:
        return self.info[name].max_entries

    # --- mmap'ed arrays ---------------------------------------------------------------

    def _view(self, name: str, dtype: type, value_size: int) -> numpy.ndarray:
        if name not in self._views:
            size = self.capacity(name) * value_size
            mm = bpfsys.map_mmap(self.fds[name], size, self.writable)
            self._mmaps[name] = mm
            self._views[name] = numpy.frombuffer(
                mm, dtype=dtype, count=size // numpy.dtype(dtype).itemsize
            )
        return self._views[name]

    def slots(self) -> numpy.ndarray:
        """Every table slot (uint32 backend indices); writable if the maps are."""
        return self._view("slots", numpy.uint32, ct.sizeof(layout.SlotLine))

    def conntrack(self) -> numpy.ndarray:
        """The flow table as uint64 words, shape (buckets, 8): ways then client records."""
        flat = self._view("conntrack", numpy.uint64, ct.sizeof(layout.CtBucket))
        return flat.reshape(-1, ct.sizeof(layout.CtBucket) // 8)

    # --- readers --------------------------------------------------------------------

    def services(self) -> list[ServiceRecord]:
        rows = bpfsys.lookup_batch(self.fds["services"], layout.SvcKey, ct.sizeof(layout.SvcValue))
        metas = self._array_all("svc_meta") if rows else b""
        msize = ct.sizeof(layout.SvcMeta)
        out = []
        for key, raw in rows:
            value = layout.SvcValue.from_buffer_copy(raw)
            at = value.index * msize
            meta = layout.SvcMeta.from_buffer_copy(metas[at : at + msize])
            out.append(
                ServiceRecord(
                    key=bytes(key),
                    vip=ip_of(key.vip_be),
                    port=port_of(key.port_be),
                    proto=key.proto,
                    index=value.index,
                    word=value.word,
                    meta=meta,
                )
            )
        out.sort(key=lambda r: (socket.inet_aton(r.vip), r.port, r.proto))
        return out

    def _array_all(self, name: str) -> bytes:
        """All values of an array map in one buffer, in index order (batch lookup)."""
        size = ct.sizeof(layout.MAPS[name][1])
        keys, values, count = bpfsys.lookup_batch_raw(self.fds[name], 4, size, chunk=16384)
        index = numpy.frombuffer(keys, dtype=numpy.uint32)
        out = numpy.zeros((self.capacity(name), size), dtype=numpy.uint8)
        out[index] = numpy.frombuffer(values, dtype=numpy.uint8).reshape(count, size)
        return out.tobytes()

    def backends(self) -> list[BackendRecord]:
        """Every backend entry that was ever written (svc key set), live or retired."""
        entries = self._array_all("backends")
        metas = self._array_all("be_meta")
        esize, msize = ct.sizeof(layout.Backend), ct.sizeof(layout.BeMeta)
        vips = numpy.frombuffer(entries, dtype=numpy.uint32).reshape(-1, esize // 4)[:, 2]
        out = []
        for i in numpy.flatnonzero(vips).tolist():  # svc_key.vip_be set: written once
            raw = entries[i * esize : (i + 1) * esize]
            out.append(
                BackendRecord(
                    index=i,
                    entry=layout.Backend.from_buffer_copy(raw),
                    meta=layout.BeMeta.from_buffer_copy(metas[i * msize : (i + 1) * msize]),
                )
            )
        return out

    def backend(self, index: int) -> layout.Backend:
        entry = layout.Backend()
        bpfsys.lookup(self.fds["backends"], ct.c_uint32(index), entry)
        return entry

    def layout_version(self) -> int:
        """The layout version recorded in the pins (0: not yet recorded)."""
        value = ct.c_uint64()
        bpfsys.lookup(self.fds["layout"], ct.c_uint32(0), value)
        return value.value

    def config(self) -> layout.Config:
        cfg = layout.Config()
        bpfsys.lookup(self.fds["config"], ct.c_uint32(0), cfg)
        return cfg

    def percpu_counters(self, name: str, index: int) -> layout.Counters:
        """A per-CPU counter summed over CPUs."""
        return percpu_sum(self.fds[name], index, self.ncpu)

    def percpu_table(self, name: str) -> numpy.ndarray:
        """Every element of a per-CPU array of counters summed over CPUs, in one batch read:
        shape (capacity, 3), columns packets, bytes, new_flows."""
        size = ct.sizeof(layout.Counters)
        keys, values, count = bpfsys.lookup_batch_raw(self.fds[name], 4, size * self.ncpu)
        per_cpu = numpy.frombuffer(values, dtype=numpy.uint64).reshape(count, self.ncpu, 3)
        out = numpy.zeros((self.capacity(name), 3), dtype=numpy.uint64)
        out[numpy.frombuffer(keys, dtype=numpy.uint32)] = per_cpu.sum(axis=1, dtype=numpy.uint64)
        return out


def percpu_sum(fd: int, index: int, ncpu: int) -> layout.Counters:
    """Element `index` of a per-CPU array of counters, summed over CPUs."""
    size = ct.sizeof(layout.Counters)
    buf = ct.create_string_buffer(size * ncpu)
    total = layout.Counters()
    if bpfsys.lookup(fd, ct.c_uint32(index), buf):
        for cpu in range(ncpu):
            c = layout.Counters.from_buffer_copy(buf.raw[cpu * size : (cpu + 1) * size])
            total.packets += c.packets
            total.bytes += c.bytes
            total.new_flows += c.new_flows
    return total
