"""The Weir data plane of one node: program the pinned maps the XDP program reads.

All methods block (bcc, bpf syscalls); the agent calls them with asyncio.to_thread.
A lock serialises them, so calls from several threads are safe.

How a change reaches packets atomically (details in nodeagent/dataplane/README.md):
  1. wait for a grace period if the half about to be written (or an index about to be
     reused) may still be read by a packet that started earlier;
  2. write the backend entries, then the inactive half's slots (only those that
     differ) through the mmap'ed slot pool, then the agent-only metadata;
  3. one weir_commit run: make new backends live, xchg the service word to the new
     half, retire the backends that left (all atomic 64-bit stores, in that order).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import dataclasses
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy
from weir.nodeagent.dataplane import bpfsys, layout, loader, migrate
from weir.nodeagent.dataplane.canonical import CanonicalService, canonicalise
from weir.nodeagent.dataplane.inspection import applied_services
from weir.nodeagent.dataplane.model import (
    AppliedService,
    BackendTarget,
    CapacityError,
    DataplaneConfig,
    DataplaneError,
    MapUsage,
)
from weir.nodeagent.dataplane.ordering import GraceBarrier, commit
from weir.nodeagent.dataplane.pinned import PinnedMaps, ServiceRecord
from weir.nodeagent.dataplane.pools import BackendPool, GracePool
from weir.nodeagent.dataplane.regions import RegionAllocator
from weir.nodeagent.dataplane.vipset import VipSet
from weir.nodeagent.service import Frontend

if TYPE_CHECKING:
    from bcc import BPF

NO_TAG = bytes(16)


@dataclass
class _Half:
    base: int = 0
    size: int = 0
    tag: bytes = NO_TAG
    members: set[int] = field(default_factory=set)  # live backend indices listed in it


@dataclass
class _Service:
    frontend: Frontend
    key: bytes
    index: int
    active: int
    halves: list[_Half]
    live: dict[BackendTarget, int]  # backends of the active half -> backend index
    retired_epoch: int  # epoch in which the inactive half stopped being active

    @property
    def inactive(self) -> int:
        return 1 - self.active


@dataclass
class _Plan:
    half: int  # the half to write
    kept: dict[BackendTarget, int] = field(default_factory=dict)  # live, same index
    revive: list[BackendTarget] = field(default_factory=list)  # retired, entry intact
    fresh: list[BackendTarget] = field(default_factory=list)  # need a new index
    sizes: list[int] = field(default_factory=list)  # regions to allocate
    releasing: list[tuple[int, int]] = field(default_factory=list)  # region given back


class Dataplane:
    """One node's data plane. Create it with Dataplane.open(cfg).

    open(cfg) -> Dataplane                 load, or adopt pins; attach XDP
    set_seed(seed)                         cluster Maglev seed for new flows
    apply_service(fe, backends, table)     -> bool (False: already so, nothing written);
                                           CapacityError / DataplaneError otherwise;
                                           fe.affinity "client_ip": new flows hash on
                                           the client address only (README.md)
    remove_service(service_id)             no-op when unknown
    applied() -> {id: AppliedService}      read back from the pinned maps
    usage() -> [MapUsage]                  services, backends, table_slots, conntrack
    close(detach=False)                    default: leave attached and pinned
    Attributes: xdp_mode ("native"/"generic", as attached), caps (map capacities in
    force), maps (PinnedMaps), xdp_prog_fd (the fast path, for BPF_PROG_TEST_RUN),
    grace_periods (RCU grace periods waited so far).
    """

    def __init__(
        self,
        cfg: DataplaneConfig,
        bpf: BPF,
        xdp_fd: int,
        commit_fd: int,
        maps: PinnedMaps,
        ifindex: int,
        caps: loader.Capacities,
    ) -> None:
        self.cfg = cfg
        self._bpf = bpf
        self.xdp_prog_fd = xdp_fd  # the compiled fast path (tests and benchmarks run it)
        self._commit_fd = commit_fd
        self.maps = maps
        self._ifindex = ifindex
        self._netns = _netns_id()  # where ifindex means our interface
        self.caps = caps
        self.xdp_mode = ""
        self._node_mac = bytes(6)
        self._lock = threading.Lock()
        self._barrier = GraceBarrier()
        self._epoch = 0
        self._services: dict[str, _Service] = {}
        self._by_key: dict[bytes, str] = {}
        self._vips = VipSet(maps.fds["vips"], maps.fds["vipf"])
        self._svc_deleted = False  # a service element was deleted since the last grace period
        self._pending_regions: list[tuple[int, int]] = []
        self._regions = RegionAllocator(caps.slots)
        self._svc_pool = GracePool(caps.services)
        self._be_pool = BackendPool(caps.backends, [0] * caps.backends)
        self._slots = maps.slots()
        self._ncpu = maps.ncpu
        self._closed = False
        self.migrated: migrate.Report | None = None  # what open() carried over from older pins

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def open(cls, cfg: DataplaneConfig) -> Dataplane:
        """Load (or adopt the pinned maps and program of a previous agent) and attach."""
        cfg.validate()
        loader.prepare_pin_dir(cfg.bpffs)
        ifindex = loader.interface_index(cfg.interface)
        node_mac = loader.interface_mac(cfg.interface)
        migration = migrate.prepare(cfg.bpffs)
        wanted = loader.Capacities.from_config(cfg)
        if migration is not None:
            old = migrate.old_capacities(migration)
            wanted = dataclasses.replace(
                wanted,
                backends=old.get("backends", wanted.backends),
                ct_buckets=old.get("conntrack", wanted.ct_buckets),
            )
        caps = loader.pinned_capacities(cfg.bpffs, wanted)
        bpf = loader.compile_program(cfg.bpffs, caps)
        maps = None
        dp = None
        try:
            xdp = bpf.load_func(layout.XDP_FUNC.encode(), bpf.XDP)
            commit_fn = bpf.load_func(layout.COMMIT_FUNC.encode(), bpf.XDP)
            maps = PinnedMaps(cfg.bpffs, writable=True)
            dp = cls(cfg, bpf, xdp.fd, commit_fn.fd, maps, ifindex, caps)
            if migration is not None:
                dp.migrated = migrate.finish(migration, maps)
            elif not maps.layout_version():
                migrate.record_version(maps)
            dp._node_mac = node_mac
            dp.set_flow_sampling(cfg.flow_sample)
            dp._set_conntrack_guard(cfg.conntrack_insert_rate)
            dp._load_state()
            dp.xdp_mode, _ = loader.attach(
                ifindex, cfg.interface, xdp.fd, cfg.xdp_mode, cfg.bpffs / layout.PROG_PIN
            )
        except BaseException:
            if dp is not None:
                dp._release()
            else:
                if maps is not None:
                    maps.close()
                bpf.cleanup()
            raise
        return dp

    def close(self, detach: bool = False) -> None:
        """Release this process's handles. By default the program stays attached and
        the maps pinned, so forwarding goes on and the next agent adopts them. With
        detach=True the program is detached and every pin removed (tracked flows go)."""
        with self._lock:
            if self._closed:
                return
            try:
                if detach:
                    if _netns_id() != self._netns:
                        raise DataplaneError(
                            "close(detach=True) must run in the network namespace the data "
                            "plane was opened in"
                        )
                    loader.detach(
                        self._ifindex, self.cfg.interface, self.cfg.bpffs / layout.PROG_PIN
                    )
                    for name in (*layout.MAPS, layout.FLOW_LOG):
                        (self.cfg.bpffs / name).unlink(missing_ok=True)
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        self._slots = numpy.zeros(0, dtype=numpy.uint32)
        self.maps.close()
        self._barrier.close()
        self._bpf.cleanup()

    # --- adoption --------------------------------------------------------------------

    def set_flow_sampling(self, rate: int) -> None:
        """Log 1 in `rate` VIP packets' decisions to the flow log (0: off). The rate shares
        a config word with the node's MAC, which every VIP packet reads anyway."""
        if not 0 <= rate <= layout.FLOW_SAMPLE_MAX:
            raise DataplaneError(f"flow sampling 1 in {rate} is out of range")
        mac = int.from_bytes(self._node_mac + b"\0\0", sys.byteorder)
        wanted = mac | rate << layout.CFG_SAMPLE_SHIFT
        if self.maps.config().node_mac != wanted:
            commit(self._commit_fd, [(layout.COMMIT_CONFIG, layout.CONFIG_NODE_MAC, wanted)])

    def _set_conntrack_guard(self, rate: int) -> None:
        """The conntrack secret (made once, when the maps are new: it lives in the pins, so
        tracked flows keep their buckets across restarts) and the insert-rate guard."""
        cfg = self.maps.config()
        ops = []
        if not cfg.ct_key:
            ops.append((layout.COMMIT_CONFIG, layout.CONFIG_CT_KEY, migrate.fresh_key()))
        if cfg.ct_guard != rate:
            ops.append((layout.COMMIT_CONFIG, layout.CONFIG_CT_GUARD, rate))
        if ops:
            commit(self._commit_fd, ops)

    def _load_state(self) -> None:
        """Rebuild the bookkeeping from what the pinned maps hold (they are the truth) and
        fix what an agent killed half way through an apply may have left behind."""
        self._services.clear()
        self._by_key.clear()
        self._pending_regions.clear()
        records = self.maps.services()
        entries = self.maps.backends()
        live_by_svc: dict[int, list] = {}
        for b in entries:
            if b.entry.handle:
                live_by_svc.setdefault(b.entry.svc, []).append(b)

        kill: list[int] = []
        used_regions: list[tuple[int, int]] = []
        in_use: dict[int, int] = {}  # backend index -> be_meta.halves
        for rec in records:
            svc = self._service_from_record(rec)
            for b in live_by_svc.pop(rec.index, []):
                if bytes(b.entry.svc_key) != rec.key or not b.meta.halves >> svc.active & 1:
                    kill.append(b.index)  # left over from an apply that did not finish
                    continue
                svc.live[b.target] = b.index
                in_use[b.index] = b.meta.halves
                for h in (0, 1):
                    if b.meta.halves >> h & 1:
                        svc.halves[h].members.add(b.index)
            self._register(svc)
            used_regions += [(h.base, h.size) for h in svc.halves if h.size]
        for rest in live_by_svc.values():  # live entries of services that are gone
            kill += [b.index for b in rest]

        try:
            self._regions = RegionAllocator(self.caps.slots, used_regions)
        except ValueError as exc:
            raise DataplaneError(f"pinned tables overlap ({exc}): remove the pins") from exc
        self._svc_pool = GracePool(self.caps.services, (s.index for s in self._services.values()))
        gens = [0] * self.caps.backends
        for b in entries:
            gens[b.index] = b.meta.gen
        self._be_pool = BackendPool(self.caps.backends, gens, in_use)
        for idx, halves in in_use.items():
            self._be_pool.halves[idx] = halves
        by_index = {s.index: s for s in self._services.values()}
        for b in entries:  # retired entries stay revivable until their index is reused
            owner = by_index.get(b.entry.svc)
            if b.index not in in_use and owner is not None and bytes(b.entry.svc_key) == owner.key:
                ident = b.target
                self._be_pool.remember(b.index, (owner.index, owner.key, ident))
        if kill:
            commit(self._commit_fd, [(layout.COMMIT_BACKEND, idx, 0) for idx in kill])
            self._write_be_meta({idx: 0 for idx in kill})
        self._vips.load(s.key[:4] for s in self._services.values())
        # Whatever the previous agent flipped or freed last may still be in use by a
        # packet: one grace period, and every half and free index is safe to write.
        self._grace()

    def _service_from_record(self, rec: ServiceRecord) -> _Service:
        base, size, half, random, client_ip = layout.word_fields(rec.word)
        halves = [
            _Half(rec.meta.half[h].base, rec.meta.half[h].size, bytes(rec.meta.half[h].tag))
            for h in (0, 1)
        ]
        halves[half].base, halves[half].size = base, size  # the word is the truth
        frontend = Frontend(
            id=rec.meta.id.decode(),
            vip=rec.vip,
            port=rec.port,
            protocol=rec.proto,
            strategy="random" if random else "maglev",
            affinity="client_ip" if client_ip else "none",
        )
        return _Service(frontend, rec.key, rec.index, half, halves, {}, retired_epoch=0)

    @contextlib.contextmanager
    def _writing(self, service_id: str) -> Iterator[None]:
        """The map writes of one operation. Should one fail half way (the kernel says
        no), nothing was flipped yet; the bookkeeping is rebuilt from the maps, so the
        next call starts from what packets really see."""
        try:
            yield
        except Exception as exc:
            try:
                self._load_state()
            except Exception as again:
                raise DataplaneError(
                    f"service {service_id}: {exc}; and reloading the maps failed: {again}"
                ) from exc
            raise DataplaneError(f"service {service_id}: {exc} (state reloaded)") from exc

    def _register(self, svc: _Service) -> None:
        self._services[svc.frontend.id] = svc
        self._by_key[svc.key] = svc.frontend.id

    # --- the public operations -------------------------------------------------------

    def set_encap(self, node_address: str, port: int, mtu: int) -> None:
        """This node's address (the outer source), the encapsulation's UDP port and the
        underlay MTU, for backends reached by encapsulation (docs/FORWARDING.md)."""
        try:
            addr = int.from_bytes(socket.inet_aton(node_address), sys.byteorder)
        except OSError:
            raise DataplaneError(f"node address {node_address!r} is not IPv4") from None
        if not 0 < port < 65536 or not 576 <= mtu <= 65535:
            raise DataplaneError(f"encapsulation port {port} or MTU {mtu} out of range")
        word = (
            addr
            | socket.htons(port) << layout.CFG_ENCAP_PORT_SHIFT
            | mtu << layout.CFG_ENCAP_MTU_SHIFT
        )
        with self._lock:
            if self.maps.config().encap != word:
                commit(self._commit_fd, [(layout.COMMIT_CONFIG, layout.CONFIG_ENCAP, word)])

    def set_seed(self, seed: int) -> None:
        """The cluster Maglev seed new flows are hashed with."""
        with self._lock:
            commit(self._commit_fd, [(layout.COMMIT_CONFIG, layout.CONFIG_SEED, seed & 0xFFFFFFFF)])

    def apply_service(
        self, fe: Frontend, backends: Sequence[BackendTarget], table: numpy.ndarray
    ) -> bool:
        """Program one service; table[i] indexes into backends. Returns False (and
        writes nothing) when the maps already hold exactly this. Raises CapacityError
        when it does not fit and DataplaneError for bad input; either way nothing of
        this service was written and every other service is as it was."""
        with self._lock:
            spec = canonicalise(fe, backends, table)
            svc = self._services.get(fe.id)
            if svc is not None:
                if svc.key != spec.key:
                    raise DataplaneError(
                        f"service {fe.id} is programmed for another frontend; remove it first"
                    )
                if svc.halves[svc.active].tag == spec.tag:
                    return False
            elif spec.key in self._by_key:
                raise DataplaneError(
                    f"service {fe.id}: {fe.vip}:{fe.port}/{fe.protocol} is already "
                    f"programmed as service {self._by_key[spec.key]}"
                )
            self._apply(spec, svc)
            return True

    def remove_service(self, service_id: str) -> None:
        """Stop serving a service; its tracked flows stop at once. Unknown ids are a no-op."""
        with self._lock:
            svc = self._services.get(service_id)
            if svc is None:
                return
            with self._writing(service_id):
                del self._services[service_id]
                del self._by_key[svc.key]
                key = layout.SvcKey.from_buffer_copy(svc.key)
                bpfsys.delete(self.maps.fds["services"], key)
                self._svc_deleted = True
                self._retire_backends(list(svc.live.values()), svc)
                for half in svc.halves:
                    if half.size:
                        self._pending_regions.append((half.base, half.size))
                self._svc_pool.release(svc.index)
                empty = layout.SvcMeta()
                bpfsys.update(self.maps.fds["svc_meta"], ct.c_uint32(svc.index), empty)
                self._vips.remove(svc.key[:4])

    def applied(self) -> dict[str, AppliedService]:
        """Every service as read back from the pinned maps (its active half)."""
        with self._lock:
            return applied_services(self.maps)

    def usage(self) -> list[MapUsage]:
        with self._lock:
            ways = self.maps.conntrack()[:, : layout.CT_WAYS]
            return [
                MapUsage("services", len(self._services), self.caps.services),
                MapUsage("backends", self._be_pool.used, self.caps.backends),
                MapUsage("table_slots", self._regions.used_slots, self.caps.slots),
                MapUsage("conntrack", int(numpy.count_nonzero(ways)), self.caps.ct_entries),
            ]

    @property
    def grace_periods(self) -> int:
        """How many RCU grace periods this object waited for (each ~10-30 ms)."""
        return self._barrier.waits

    # --- apply -------------------------------------------------------------------------

    def _apply(self, spec: CanonicalService, svc: _Service | None) -> None:
        plan = self._plan(spec, svc)  # raises CapacityError before any write
        # A grace period first when something about to be written may still be read.
        if (
            (svc is not None and svc.retired_epoch >= self._epoch)
            or len(plan.fresh) > self._be_pool.free_now
            or (svc is None and (self._svc_deleted or not self._svc_pool.free_now))
            or not self._regions.fits(plan.sizes, plan.releasing)
        ):
            self._grace()
        with self._writing(spec.frontend.id):
            new_service = svc is None
            svc = self._prepare(spec, svc)
            index_of, ops = self._write_backends(plan, svc)
            self._write_half(spec, svc, plan, index_of)
            self._publish(spec, svc, index_of, ops, new_service)

    def _plan(self, spec: CanonicalService, svc: _Service | None) -> _Plan:
        """Which index each backend gets (kept, revived or new) and the room it all needs;
        CapacityError when it does not fit."""
        fe, size, pool = spec.frontend, spec.size, self._be_pool
        # The double buffer: while a service changes, its old half (and the backends it
        # names) stays readable beside the new one. What cannot fit even alone never will.
        never = self.caps.never_fits(len(spec.backends), 2 * size)
        if never:
            raise DataplaneError(f"service {fe.id} can never fit: it {never}")
        plan = _Plan(half=0 if svc is None else svc.inactive)
        for b in spec.backends:
            if svc is not None and b in svc.live:
                plan.kept[b] = svc.live[b]
            elif svc is not None and pool.can_revive((svc.index, svc.key, b)):
                plan.revive.append(b)
            else:
                plan.fresh.append(b)
        if svc is None:
            plan.sizes = [size, size] if size else []  # both halves reserved up front
            if len(self._services) >= self.caps.services or not self._svc_pool.available:
                raise CapacityError(
                    f"service {fe.id}: all {self.caps.services} service entries are in use"
                )
        else:
            old = svc.halves[plan.half]
            if old.size != size:
                plan.sizes = [size] if size else []
                plan.releasing = [(old.base, old.size)] if old.size else []
        if len(plan.fresh) > pool.available:
            raise CapacityError(
                f"service {fe.id}: needs {len(plan.fresh)} new backend entries, "
                f"{pool.available} of {self.caps.backends} are free"
            )
        if not self._regions.fits(plan.sizes, plan.releasing + self._pending_regions):
            raise CapacityError(
                f"service {fe.id}: needs {sum(plan.sizes)} table slots "
                f"({len(plan.sizes)} x {size}), {self._regions.free_slots} of "
                f"{self.caps.slots} are free (or no contiguous run is long enough)"
            )
        return plan

    def _prepare(self, spec: CanonicalService, svc: _Service | None) -> _Service:
        """The service's bookkeeping, with a region of the right size for the half to write."""
        size = spec.size
        if svc is None:
            index = self._svc_pool.take()
            halves = [_Half(), _Half()]
            for half in halves:
                if size:
                    half.base, half.size = self._alloc_region(size), size
            self._zero_percpu("svc_stats", [index])
            return _Service(spec.frontend, spec.key, index, 1, halves, {}, retired_epoch=-1)
        half = svc.halves[svc.inactive]
        if half.size != size:
            if half.size:
                self._regions.release(half.base, half.size)
            half.base = self._alloc_region(size) if size else 0
            half.size = size
        return svc

    def _write_backends(
        self, plan: _Plan, svc: _Service
    ) -> tuple[dict[BackendTarget, int], list[tuple[int, int, int]]]:
        """Indices for every backend; new entries written whole while nothing can reach
        them (handle 0). Returns the indices and the commit ops that make them live."""
        pool = self._be_pool
        index_of = dict(plan.kept)
        for b in plan.revive:
            index_of[b] = pool.revive((svc.index, svc.key, b))  # type: ignore[assignment]
        entries = []
        for b in plan.fresh:
            index_of[b] = pool.take()
            entries.append((index_of[b], self._backend_entry(b, svc)))
        ops = []
        for b in (*plan.revive, *plan.fresh):
            idx = index_of[b]
            ops.append((layout.COMMIT_BACKEND, idx, layout.handle_of(idx, pool.next_gen(idx))))
        if entries:
            keys = (ct.c_uint32 * len(entries))(*(idx for idx, _ in entries))
            values = (layout.Backend * len(entries))(*(e for _, e in entries))
            bpfsys.update_batch(self.maps.fds["backends"], keys, values, len(entries))
            self._zero_percpu("be_stats", [idx for idx, _ in entries])
        return index_of, ops

    def _write_half(
        self, spec: CanonicalService, svc: _Service, plan: _Plan, index_of: dict[BackendTarget, int]
    ) -> None:
        """The inactive half: its slots (only those that differ), who it lists, its tag."""
        target = svc.halves[plan.half]
        if spec.size:
            ids = numpy.fromiter((index_of[b] for b in spec.backends), dtype=numpy.uint32)
            want = ids[spec.table]
            region = self._slots[target.base : target.base + spec.size]
            differ = region != want
            region[differ] = want[differ]
        pool, bit = self._be_pool, 1 << plan.half
        members = set(index_of.values())
        kept = set(plan.kept.values())
        changes = {idx: pool.halves[idx] | bit for idx in kept}
        changes.update({idx: pool.halves[idx] & ~bit for idx in target.members - members})
        changes = {idx: v for idx, v in changes.items() if v != pool.halves[idx]}
        changes.update({idx: bit for idx in members - kept})  # revived, new: new gen
        self._write_be_meta(changes)
        target.members = members
        target.tag = spec.tag
        svc.frontend = spec.frontend
        self._write_svc_meta(svc, spec.strategy_code)

    def _publish(
        self,
        spec: CanonicalService,
        svc: _Service,
        index_of: dict[BackendTarget, int],
        ops: list[tuple[int, int, int]],
        new_service: bool,
    ) -> None:
        """One commit run: new backends live, the word switched, departed backends retired.
        A new service becomes visible by inserting its (complete) element instead."""
        h = 1 - svc.active
        target = svc.halves[h]
        fe = spec.frontend
        word = layout.word_of(target.base, spec.size, h, fe.strategy == "random", fe.client_ip)
        if new_service:
            commit(self._commit_fd, ops)
            self._register(svc)
            self._vips.add(svc.key[:4])
            key = layout.SvcKey.from_buffer_copy(spec.key)
            value = layout.SvcValue(word=word, index=svc.index)
            bpfsys.update(self.maps.fds["services"], key, value, bpfsys.BPF_NOEXIST)
        else:
            gone = [idx for b, idx in svc.live.items() if b not in index_of]
            ops.append((layout.COMMIT_FLIP, int.from_bytes(spec.key, sys.byteorder), word))
            ops += [(layout.COMMIT_BACKEND, idx, 0) for idx in gone]
            commit(self._commit_fd, ops)
            self._after_retire(gone, svc)
        svc.active = h
        svc.retired_epoch = -1 if new_service else self._epoch  # -1: never read
        svc.live = index_of

    def _alloc_region(self, size: int) -> int:
        base = self._regions.alloc(size)
        if base is None:  # fits() said it would: a bug, not a user error
            raise DataplaneError(f"slot pool: no region of {size} after the capacity check")
        return base

    def _grace(self) -> None:
        """Wait for an RCU grace period; everything released before is reusable."""
        self._barrier.wait()
        self._epoch += 1
        self._be_pool.grace_passed()
        self._svc_pool.grace_passed()
        for base, size in self._pending_regions:
            self._regions.release(base, size)
        self._pending_regions.clear()
        self._svc_deleted = False

    def _retire_backends(self, indices: list[int], svc: _Service | None = None) -> None:
        """Make backends not live (handle 0, atomically) and release their indices."""
        if not indices:
            return
        commit(self._commit_fd, [(layout.COMMIT_BACKEND, idx, 0) for idx in indices])
        self._after_retire(indices, svc)

    def _after_retire(self, indices: list[int], svc: _Service | None) -> None:
        if not indices:
            return
        self._write_be_meta({idx: 0 for idx in indices})
        if svc is None:
            for idx in indices:
                self._be_pool.release(idx)
            return
        ident_of = {idx: b for b, idx in svc.live.items()}
        for idx in indices:
            self._be_pool.retire(idx, (svc.index, svc.key, ident_of[idx]))
            for half in svc.halves:
                half.members.discard(idx)

    # --- map writes ---------------------------------------------------------------------

    def _backend_entry(self, b: BackendTarget, svc: _Service) -> layout.Backend:
        entry = layout.Backend()
        entry.handle = 0
        ct.memmove(ct.addressof(entry.svc_key), svc.key, len(svc.key))
        ct.memmove(entry.mac, b.mac, 6)
        entry.port_be = socket.htons(b.port)
        entry.addr_be = int.from_bytes(socket.inet_aton(b.address), sys.byteorder)
        entry.svc = svc.index
        if b.node:
            entry.node_be = int.from_bytes(socket.inet_aton(b.node), sys.byteorder)
            entry.flags = layout.BE_F_ENCAP
        return entry

    def _write_be_meta(self, changes: dict[int, int]) -> None:
        if not changes:
            return
        pool = self._be_pool
        keys = (ct.c_uint32 * len(changes))(*changes)
        values = (layout.BeMeta * len(changes))()
        for value, (idx, halves) in zip(values, changes.items(), strict=True):
            pool.halves[idx] = halves
            value.gen, value.halves = pool.gens[idx], halves
        bpfsys.update_batch(self.maps.fds["be_meta"], keys, values, len(changes))

    def _zero_percpu(self, name: str, indices: list[int]) -> None:
        if not indices:
            return
        size = ct.sizeof(layout.Counters) * self._ncpu
        keys = (ct.c_uint32 * len(indices))(*indices)
        values = ct.create_string_buffer(size * len(indices))
        bpfsys.update_batch(self.maps.fds[name], keys, values, len(indices))

    def _write_svc_meta(self, svc: _Service, strategy: int) -> None:
        meta = layout.SvcMeta()
        meta.id = svc.frontend.id.encode()
        for h, half in enumerate(svc.halves):
            meta.half[h].base = half.base
            meta.half[h].size = half.size
            ct.memmove(meta.half[h].tag, half.tag, 16)
        meta.strategy = strategy
        meta.used = 1
        bpfsys.update(self.maps.fds["svc_meta"], ct.c_uint32(svc.index), meta)


def _netns_id() -> int:
    """The calling thread's network namespace (netns is per thread)."""
    return os.stat("/proc/thread-self/ns/net").st_ino
