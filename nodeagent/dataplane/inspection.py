"""Read-only views of the pinned maps (typed records, no text): `weirctl bpf ...` and
Dataplane.applied() are built on them."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy
from weir.nodeagent.dataplane import layout
from weir.nodeagent.dataplane.flowhash import ct_position
from weir.nodeagent.dataplane.model import AppliedService, BackendTarget
from weir.nodeagent.dataplane.pinned import BackendRecord, PinnedMaps, ServiceRecord, ip_of, port_of
from weir.nodeagent.service import Frontend


def mac_text(mac: bytes) -> str:
    return mac.hex(":")


@dataclass(frozen=True)
class NatBackend:
    index: int
    address: str
    port: int
    mac: bytes
    handle: int
    slots: int  # in the active half
    node: str  # encapsulated to this node ("" for L2 DSR)


@dataclass(frozen=True)
class NatService:
    record: ServiceRecord
    id: str
    strategy: str
    affinity: str  # "none" or "client_ip"
    table_size: int
    active_half: int
    base: int
    inactive_base: int
    inactive_size: int
    backends: list[NatBackend]

    @property
    def flags(self) -> str:
        """e.g. "maglev" or "maglev,affinity" (weirctl bpf nat dump)."""
        return self.strategy + (",affinity" if self.affinity == "client_ip" else "")


def nat_services(maps: PinnedMaps) -> list[NatService]:
    """Every service with the backends of its active half and their slot counts."""
    by_svc: dict[int, list[BackendRecord]] = {}
    for b in maps.backends():
        if b.entry.handle:
            by_svc.setdefault(b.entry.svc, []).append(b)
    slots = maps.slots()
    out = []
    for rec in maps.services():
        base, size, half, random, client_ip = layout.word_fields(rec.word)
        ids, n = numpy.unique(slots[base : base + size], return_counts=True)
        counts = dict(zip(ids.tolist(), n.tolist(), strict=True))
        backends = [
            NatBackend(
                b.index, b.address, b.port, b.mac, b.entry.handle, counts.get(b.index, 0), b.node
            )
            for b in by_svc.get(rec.index, [])
            if bytes(b.entry.svc_key) == rec.key and b.meta.halves >> half & 1
        ]
        backends.sort(key=lambda b: (socket.inet_aton(b.address), b.port, b.mac))
        other = rec.meta.half[1 - half]
        out.append(
            NatService(
                record=rec,
                id=rec.meta.id.decode(),
                strategy="random" if random else "maglev",
                affinity="client_ip" if client_ip else "none",
                table_size=size,
                active_half=half,
                base=base,
                inactive_base=other.base,
                inactive_size=other.size,
                backends=backends,
            )
        )
    return out


NO_BACKEND = 0xFFFFFFFF  # in read-back tables: a slot naming no backend of its half


def applied_services(maps: PinnedMaps) -> dict[str, AppliedService]:
    """What every service's active half holds, from the pinned maps alone, in the
    canonical form apply_service writes (backends sorted by address, port, MAC)."""
    slots = maps.slots()
    out = {}
    for svc in nat_services(maps):
        table = numpy.zeros(0, dtype=numpy.uint32)
        if svc.table_size and svc.backends:
            indices = numpy.array([b.index for b in svc.backends], dtype=numpy.uint32)
            order = numpy.argsort(indices)
            region = slots[svc.base : svc.base + svc.table_size]
            at = numpy.minimum(numpy.searchsorted(indices[order], region), len(indices) - 1)
            found = indices[order][at] == region
            table = numpy.where(found, order[at], NO_BACKEND).astype(numpy.uint32)
        rec = svc.record
        fe = Frontend(
            svc.id,
            rec.vip,
            rec.port,
            rec.proto,
            svc.strategy,  # type: ignore[arg-type]
            svc.affinity,  # type: ignore[arg-type]
        )
        out[svc.id] = AppliedService(
            frontend=fe,
            backends=tuple(BackendTarget(b.address, b.port, b.mac, b.node) for b in svc.backends),
            table=table,
            tag=bytes(rec.meta.half[svc.active_half].tag).hex(),
            active_half=svc.active_half,
            table_size=svc.table_size,
        )
    return out


@dataclass(frozen=True)
class CtEntry:
    bucket: int
    way: int
    proto: int
    client: str | None  # None when the display record was overwritten since
    client_port: int
    vip: str
    port: int
    backend: str
    backend_port: int
    backend_mac: bytes
    live: bool  # False: the backend was retired or its index reused (flow is re-picked)


def ct_entries(maps: PinnedMaps, limit: int | None = None) -> tuple[list[CtEntry], int]:
    """Tracked flows (at most `limit`) and the total number of used ways."""
    table = maps.conntrack()
    ways = table[:, : layout.CT_WAYS]
    used = numpy.argwhere(ways != 0)
    buckets = len(table)
    clients = (
        table[:, layout.CT_WAYS :].copy().view(numpy.uint8).reshape(buckets, layout.CT_WAYS, 8)
    )
    entries: list[CtEntry] = []
    backend_cache: dict[int, layout.Backend] = {}
    secret = maps.config().ct_key
    for bucket, way in used[:limit].tolist() if limit is not None else used.tolist():
        word = int(ways[bucket, way])
        handle = word & layout.CT_HANDLE_MASK
        index = handle & layout.BE_INDEX_MASK
        if index not in backend_cache:
            backend_cache[index] = maps.backend(index)
        be = backend_cache[index]
        key = layout.SvcKey.from_buffer_copy(bytes(be.svc_key))
        vip, vport, proto = ip_of(key.vip_be), port_of(key.port_be), key.proto
        raw = bytes(clients[bucket, way])
        client = socket.inet_ntoa(raw[:4])
        cport = int.from_bytes(raw[4:6], "big")
        pos = ct_position(client, vip, cport, vport, proto, secret, buckets)
        trusted = pos == (bucket, word >> layout.CT_FP_SHIFT)
        entries.append(
            CtEntry(
                bucket=bucket,
                way=way,
                proto=proto,
                client=client if trusted else None,
                client_port=cport if trusted else 0,
                vip=vip,
                port=vport,
                backend=ip_of(be.addr_be),
                backend_port=port_of(be.port_be),
                backend_mac=bytes(be.mac),
                live=be.handle == handle,
            )
        )
    return entries, len(used)


@dataclass(frozen=True)
class CounterRow:
    name: str
    packets: int
    bytes: int
    new_flows: int


def stats(maps: PinnedMaps) -> tuple[list[tuple[CounterRow, list[CounterRow]]], list[CounterRow]]:
    """Per service (with its backends) and per drop reason, summed over CPUs."""
    services = []
    for svc in nat_services(maps):
        c = maps.percpu_counters("svc_stats", svc.record.index)
        rows = []
        for b in svc.backends:
            bc = maps.percpu_counters("be_stats", b.index)
            rows.append(CounterRow(f"{b.address}:{b.port}", bc.packets, bc.bytes, bc.new_flows))
        services.append((CounterRow(svc.id, c.packets, c.bytes, c.new_flows), rows))
    return services, _reasons(maps, "drop_stats", layout.DROP_REASONS)


def pass_counts(maps: PinnedMaps) -> list[CounterRow]:
    """Frames for a VIP passed to the kernel untouched because they were not addressed
    to this node's MAC (flooded or multicast), per reason, summed over CPUs."""
    return _reasons(maps, "pass_stats", layout.PASS_REASONS)


def ct_events(maps: PinnedMaps) -> list[CounterRow]:
    """What happened to conntrack (inserts, evictions, flows left untracked and why),
    summed over CPUs; `packets` counts the events."""
    return _reasons(maps, "ct_stats", layout.CT_EVENTS)


def _reasons(maps: PinnedMaps, map_name: str, names: tuple[str, ...]) -> list[CounterRow]:
    rows = []
    for reason, name in enumerate(names):
        c = maps.percpu_counters(map_name, reason)
        rows.append(CounterRow(name, c.packets, c.bytes, 0))
    return rows
