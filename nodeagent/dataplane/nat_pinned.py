"""Open the backend role's pinned maps by path and read them (no compiler needed).

Shared by the backend role's data plane (nat.NatDataplane) and weirctl (`weirctl bpf nat
local|flows`, `weirctl bpf stats`). A node without the backend role has none of these pins:
has_nat_pins() tells before opening.
"""

from __future__ import annotations

import ctypes as ct
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.model import DataplaneError, MapUsage
from weir.nodeagent.dataplane.pinned import ip_of, percpu_sum, port_of, possible_cpus


@dataclass(frozen=True, order=True)
class LocalBackend:
    """A translation this node serves: VIP:vport (protocol) -> pod address:port."""

    vip: str
    vport: int
    proto: int
    address: str
    port: int


@dataclass(frozen=True)
class NatCounter:
    name: str
    packets: int
    bytes: int
    new_flows: int


@dataclass(frozen=True)
class NatFlow:
    """A flow being translated back: pod:port -> client:cport leaves as vip:vport."""

    address: str
    port: int
    client: str
    cport: int
    proto: int
    vip: str
    vport: int


@dataclass(frozen=True)
class Translation:
    """A local backend as the maps hold it, with its counters' index."""

    backend: LocalBackend
    index: int


def has_nat_pins(directory: Path) -> bool:
    return (Path(directory) / "nat_config").exists()


def backend_of(key: layout.NatBackendKey) -> LocalBackend:
    return LocalBackend(
        ip_of(key.vip_be),
        port_of(key.vport_be),
        key.proto,
        ip_of(key.addr_be),
        port_of(key.port_be),
    )


class PinnedNatMaps:
    """File descriptors of the backend role's pinned maps under one bpffs directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.fds: dict[str, int] = {}
        self.info: dict[str, bpfsys.MapInfo] = {}
        try:
            for name in layout.NAT_MAPS:
                fd = bpfsys.obj_get(str(self.directory / name))
                self.fds[name] = fd
                self.info[name] = bpfsys.map_info(fd)
        except OSError as exc:
            self.close()
            raise DataplaneError(
                f"cannot open the backend-role maps under {directory}: {exc}"
            ) from exc
        self.ncpu = possible_cpus()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def capacity(self, name: str) -> int:
        return self.info[name].max_entries

    def config(self) -> layout.NatConfig:
        value = layout.NatConfig()
        bpfsys.lookup(self.fds["nat_config"], ct.c_uint32(0), value)
        return value

    def translations(self) -> list[Translation]:
        rows = bpfsys.lookup_batch(self.fds["local_backends"], layout.NatBackendKey, 8)
        out = [
            Translation(backend_of(k), layout.NatBackend.from_buffer_copy(v).index) for k, v in rows
        ]
        return sorted(out, key=lambda t: (socket.inet_aton(t.backend.vip), t.backend))

    def lb_nodes(self) -> list[str]:
        rows = bpfsys.lookup_batch(self.fds["lb_nodes"], ct.c_uint32, 4)
        return sorted((ip_of(k.value) for k, _ in rows), key=socket.inet_aton)

    def flows(self) -> list[NatFlow]:
        rows = bpfsys.lookup_batch(self.fds["nat_flows"], layout.NatFlowKey, 8)
        out = []
        for k, raw in rows:
            v = layout.NatVip.from_buffer_copy(raw)
            out.append(
                NatFlow(
                    ip_of(k.addr_be),
                    port_of(k.port_be),
                    ip_of(k.client_be),
                    port_of(k.cport_be),
                    k.proto,
                    ip_of(v.vip_be),
                    port_of(v.vport_be),
                )
            )
        return sorted(out, key=_flow_order)

    def counters(self) -> tuple[list[NatCounter], list[NatCounter]]:
        """(events, drops), by reason, summed over CPUs."""
        events = [self._counter("nat_events", i, n) for i, n in enumerate(layout.NAT_EVENTS)]
        drops = [self._counter("nat_drops", i, n) for i, n in enumerate(layout.NAT_DROPS)]
        return events, drops

    def backend_counter(self, t: Translation) -> NatCounter:
        b = t.backend
        return self._counter("be_nat_stats", t.index, f"{b.address}:{b.port}")

    def _counter(self, name: str, index: int, label: str) -> NatCounter:
        c = percpu_sum(self.fds[name], index, self.ncpu)
        return NatCounter(label, c.packets, c.bytes, c.new_flows)

    def usage(self) -> list[MapUsage]:
        out = []
        for name in ("lb_nodes", "local_backends", "nat_flows"):
            key_t, value_t = layout.NAT_MAPS[name]
            _, _, count = bpfsys.lookup_batch_raw(
                self.fds[name], ct.sizeof(key_t), ct.sizeof(value_t)
            )
            out.append(MapUsage(name, count, self.capacity(name)))
        return out


def _flow_order(f: NatFlow) -> tuple[bytes, int, bytes, int]:
    return socket.inet_aton(f.address), f.port, socket.inet_aton(f.client), f.cport
