"""Types at the data plane's boundary. The services it programs are the agent's model
(nodeagent.service.Frontend); these are its own: configuration, errors, what it reads back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy
from weir.nodeagent.dataplane.layout import FLOW_SAMPLE_MAX, MAX_BACKENDS_LIMIT, SLOTS_PER_LINE
from weir.nodeagent.service import Frontend


class DataplaneError(RuntimeError):
    """The data plane cannot do what was asked; the message says why."""


class CapacityError(DataplaneError):
    """A service does not fit in the maps; nothing of it was written."""


XdpMode = Literal["auto", "native", "generic"]


@dataclass(frozen=True)
class DataplaneConfig:
    interface: str
    bpffs: Path = Path("/sys/fs/bpf/weir")
    xdp_mode: XdpMode = "auto"
    max_services: int = 1024
    max_backends: int = 65536  # (service, backend) pairs; at most 2**20
    # Maglev slots over all services and both halves of each: 256 services at the
    # default M = 16381 (4 bytes a slot: 32 MiB).
    max_table_slots: int = 8_388_608
    # Flows tracked (4-way buckets of one cache line: 16 bytes a flow, 4 MiB). Bigger
    # tables outgrow the caches: new flows then pay a cache and TLB miss (see README).
    conntrack_entries: int = 262_144
    # New conntrack entries per second and CPU; beyond, new flows are forwarded by Maglev
    # untracked, so a flood of new flows cannot evict established ones (0: no limit).
    conntrack_insert_rate: int = 50_000
    # The flow log (`weirctl flows`): log 1 in this many VIP packets' decisions (0: off).
    flow_sample: int = 0

    def validate(self) -> None:
        if not self.interface:
            raise DataplaneError("no interface given")
        if self.xdp_mode not in ("auto", "native", "generic"):
            raise DataplaneError(f"xdp mode {self.xdp_mode!r} is not auto, native or generic")
        checks = (
            ("max_services", self.max_services, 1, 1 << 20),
            ("max_backends", self.max_backends, 1, MAX_BACKENDS_LIMIT),
            ("max_table_slots", self.max_table_slots, SLOTS_PER_LINE, 1 << 32),
            ("conntrack_entries", self.conntrack_entries, 4, 1 << 31),
            ("conntrack_insert_rate", self.conntrack_insert_rate, 0, 1 << 32),
            ("flow_sample", self.flow_sample, 0, FLOW_SAMPLE_MAX),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise DataplaneError(f"{name} = {value} is out of range [{low}, {high}]")


@dataclass(frozen=True, order=True)
class BackendTarget:
    """Where the data plane sends a backend's flows.

    L2 DSR (node ""): to `mac`, the backend's own on the uplink segment. Encapsulated (node
    set): to `node`, the backend's node, through the next hop `mac`; the node translates to
    address:port (docs/FORWARDING.md)."""

    address: str
    port: int
    mac: bytes
    node: str = ""


@dataclass(frozen=True, eq=False)
class AppliedService:
    """A service as the pinned maps hold it (its active half).

    backends are sorted by (address, port, mac); table[i] indexes into them. apply_service
    sorts the same way, so a service applied with sorted backends reads back equal."""

    frontend: Frontend
    backends: tuple[BackendTarget, ...]
    table: numpy.ndarray
    tag: str  # content tag (hex) of the active half
    active_half: int
    table_size: int

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AppliedService):
            return NotImplemented
        return (
            self.frontend == other.frontend
            and self.backends == other.backends
            and self.tag == other.tag
            and self.active_half == other.active_half
            and numpy.array_equal(self.table, other.table)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class MapUsage:
    name: str
    used: int
    capacity: int
