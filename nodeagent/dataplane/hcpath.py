"""The health checks' path on a load-balancer node: bpf/weir_hc.c on the uplink's tc egress.

    path = HcPath.open("eth0", capacity=4096)
    path.set({3: HcRoute(mac, encap=None)})  # the check socket with mark(3) goes to mac
    path.counters(); path.close()

A check socket marked with mark(index) leaves the uplink toward the backend the way the XDP
program sends a client's packet: to the backend's MAC (L2 DSR), or encapsulated toward its
node (docs/HEALTH.md). The map is the agent's alone and not pinned: a restarted agent loads
the program again and atomically replaces the filter, then fills the map before it checks.
Every method blocks (bcc, netlink): call them in a thread.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weir.nodeagent.dataplane import bpfsys, layout, loader
from weir.nodeagent.dataplane.model import DataplaneError

if TYPE_CHECKING:
    from bcc import BPF

SOURCE = layout.BPF_DIR / "weir_hc.c"
FUNC = "weir_hc_egress"
MARK_BASE = 0x57480000  # WEIR_HC_MARK_BASE: the mark's upper 16 bits say "a check"
MAX_PATHS = 1 << 16  # the mark's lower 16 bits are the path index
TC_HANDLE = 0x5745  # nat.TC_HANDLE: Weir's filters on the uplink
# Before the backend role's egress filter (0xC000): a check is sent, not translated.
TC_PRIORITY = 0x100
EVENTS = ("l2", "encap", "no_path", "bad")  # enum hc_event


def mark(index: int) -> int:
    return MARK_BASE | index


@dataclass(frozen=True)
class Encap:
    """Encapsulated to the pod address:port on the node node, from source (this node)."""

    source: str
    node: str
    address: str
    port: int
    udp_port: int


@dataclass(frozen=True)
class HcRoute:
    mac: bytes  # the backend's (L2 DSR) or the next hop toward its node (encap)
    encap: Encap | None = None


class HcPath:
    def __init__(self, interface: str, ifindex: int, bpf: BPF, capacity: int) -> None:
        self.interface = interface
        self.ifindex = ifindex
        self.capacity = capacity
        self._bpf = bpf
        self._paths = bpf[b"hc_paths"]
        self._stats = bpf[b"hc_stats"]
        self._written: dict[int, HcRoute] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, interface: str, capacity: int = 4096) -> HcPath:
        from bcc import BPF  # late: the pure-Python parts work without bcc

        if not 0 < capacity <= MAX_PATHS:
            raise DataplaneError(f"health-check paths: capacity {capacity} not in 1..{MAX_PATHS}")
        ifindex = loader.interface_index(interface)
        try:
            bpf = BPF(
                src_file=str(SOURCE).encode(),
                cflags=[f"-DWEIR_HC_PATHS={capacity}", f"-I{layout.BPF_DIR}"],
            )
        except Exception as exc:  # bcc raises bare Exception on compile/load errors
            raise DataplaneError(f"cannot build the health-check program: {exc}") from exc
        try:
            prog = bpf.load_func(FUNC.encode(), BPF.SCHED_CLS)
            bpfsys.tc_hook_create(ifindex)
            bpfsys.tc_attach(ifindex, bpfsys.BPF_TC_EGRESS, prog.fd, TC_HANDLE, TC_PRIORITY)
        except Exception as exc:
            bpf.cleanup()
            raise DataplaneError(f"cannot attach the health-check program: {exc}") from exc
        return cls(interface, ifindex, bpf, capacity)

    def set(self, routes: Mapping[int, HcRoute]) -> None:
        """Make the map hold exactly these paths (by index); unchanged entries are left."""
        with self._lock:
            for index in self._written.keys() - routes.keys():
                self._paths[self._paths.Key(index)] = self._paths.Leaf()
                del self._written[index]
            for index, route in routes.items():
                if not 0 <= index < self.capacity:
                    raise DataplaneError(f"health-check path index {index} out of range")
                if self._written.get(index) != route:
                    self._paths[self._paths.Key(index)] = self._leaf(route)
                    self._written[index] = route

    def _leaf(self, route: HcRoute) -> object:
        leaf = self._paths.Leaf()
        leaf.mac[:] = list(route.mac)
        e = route.encap
        if e is not None:
            leaf.encap = 1
            leaf.src_be = _be32(e.source)
            leaf.node_be = _be32(e.node)
            leaf.addr_be = _be32(e.address)
            leaf.port_be = socket.htons(e.port)
            leaf.udp_be = socket.htons(e.udp_port)
        return leaf

    def counters(self) -> dict[str, int]:
        """Packets per event, summed over the CPUs."""
        with self._lock:
            return {
                name: sum(c.packets for c in self._stats[self._stats.Key(i)])
                for i, name in enumerate(EVENTS)
            }

    def close(self) -> None:
        """Detach: a check without this program would go to the VIP's routers."""
        with self._lock:
            try:
                bpfsys.tc_detach(self.ifindex, bpfsys.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY)
            finally:
                self._bpf.cleanup()


def _be32(address: str) -> int:
    """The address as the C struct holds it: network order bytes in a native u32."""
    return int.from_bytes(ipaddress.IPv4Address(address).packed, sys.byteorder)
