"""The backend node's data plane: tc programs on the uplink that take encapsulated packets
from the load-balancer nodes to local pods, and translate the pods' replies back
(bpf/weir_tc.c; the wire format is docs/FORWARDING.md).

    nat = NatDataplane.open(NatConfig(interface="eth0", bpffs=Path("/sys/fs/bpf/weir")))
    nat.configure(NatSettings(node_address="10.0.1.5", encap_port=6093, mtu=1500))
    nat.set_lb_nodes({"10.0.0.11", "10.0.0.12"})
    nat.set_local_backends([LocalBackend("192.0.2.10", 80, 6, "10.244.1.7", 8080)])
    nat.local_backends(); nat.flows(); nat.counters(); nat.usage(); nat.close()

Every method blocks (bcc, bpf syscalls): the agent calls them in a thread. The maps are
pinned beside the XDP program's, so a restarted agent adopts them, and with them the flows
being translated back; the programs stay attached across restarts and are replaced
atomically when their code changes. `set_*` reconcile the maps with a whole desired state.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import dataclasses
import os
import socket
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from weir.nodeagent.dataplane import bpfsys, layout, loader
from weir.nodeagent.dataplane.model import DataplaneError, MapUsage
from weir.nodeagent.dataplane.nat_pinned import (
    LocalBackend,
    NatCounter,
    NatFlow,
    PinnedNatMaps,
    Translation,
)

if TYPE_CHECKING:
    from bcc import BPF

# tc filter identity on the uplink: decapsulate before other programs look at the packet;
# translate replies back after them (their verdict for the pod's packet stands).
TC_HANDLE = 0x5745
TC_PRIORITY_INGRESS = 1
TC_PRIORITY_EGRESS = 0xC000
PROG_PINS = {
    layout.TC_INGRESS_FUNC: ("prog_tc_ingress", bpfsys.BPF_TC_INGRESS, TC_PRIORITY_INGRESS),
    layout.TC_EGRESS_FUNC: ("prog_tc_egress", bpfsys.BPF_TC_EGRESS, TC_PRIORITY_EGRESS),
}
TCP_IP_HEADERS = 40
DEFAULT_ENCAP_PORT = 6093


@dataclass(frozen=True)
class NatConfig:
    interface: str
    bpffs: Path = Path("/sys/fs/bpf/weir")
    max_lb_nodes: int = 1024
    max_local_backends: int = 16384
    # Flows being translated back (16-byte key, 8-byte value; LRU): 262,144 ~ 10 MiB.
    flows: int = 262_144

    def validate(self) -> None:
        checks = (
            ("max_lb_nodes", self.max_lb_nodes, 1, 1 << 16),
            ("max_local_backends", self.max_local_backends, 1, 1 << 20),
            ("flows", self.flows, 64, 1 << 26),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise DataplaneError(f"{name} = {value} is out of range [{low}, {high}]")


@dataclass(frozen=True)
class NatSettings:
    node_address: str  # where the load balancers send encapsulated packets
    encap_port: int = DEFAULT_ENCAP_PORT
    mtu: int = 1500  # the underlay's: SYN-ACKs' MSS is clamped to fit the encapsulation

    @property
    def mss(self) -> int:
        return self.mtu - layout.ENCAP_OVERHEAD - TCP_IP_HEADERS


def _be32(address: str) -> int:
    """An IPv4 address as a host integer whose bytes in memory are network order."""
    try:
        return int.from_bytes(socket.inet_aton(address), sys.byteorder)
    except OSError:
        raise DataplaneError(f"{address!r} is not an IPv4 address") from None


def _be16(port: int) -> int:
    return socket.htons(port)


def check_local(b: LocalBackend) -> None:
    """Raise DataplaneError if set_local_backends cannot program this translation."""
    _backend_key(b)


def _backend_key(b: LocalBackend) -> layout.NatBackendKey:
    if not (0 < b.vport < 65536 and 0 < b.port < 65536):
        raise DataplaneError(f"{b}: ports must be 1..65535")
    if b.proto not in (6, 17):
        raise DataplaneError(f"{b}: protocol {b.proto} is not TCP or UDP")
    return layout.NatBackendKey(
        vip_be=_be32(b.vip),
        addr_be=_be32(b.address),
        vport_be=_be16(b.vport),
        port_be=_be16(b.port),
        proto=b.proto,
    )


class NatDataplane:
    """The tc programs on one interface and their pinned maps. cfg holds the capacities in
    force: those of the pinned maps when they were adopted."""

    def __init__(self, cfg: NatConfig, ifindex: int, bpf: BPF, maps: PinnedNatMaps) -> None:
        self.cfg = cfg
        self.ifindex = ifindex
        self._bpf: BPF | None = bpf  # keeps the programs loaded while attached from here
        self.maps = maps
        self._fds = maps.fds
        self._lock = threading.Lock()
        self._free = self._free_indices()

    # --- open / close ------------------------------------------------------------------

    @classmethod
    def open(cls, cfg: NatConfig) -> NatDataplane:
        cfg.validate()
        ifindex = loader.interface_index(cfg.interface)
        loader.prepare_pin_dir(cfg.bpffs)
        sizes = _pinned_sizes(cfg)
        bpf = compile_programs(cfg, sizes)
        maps = None
        try:
            maps = PinnedNatMaps(cfg.bpffs)
            _check_layout(maps)
            for func, (pin, point, priority) in PROG_PINS.items():
                prog = bpf.load_func(func.encode(), bpf.SCHED_CLS)
                _attach(ifindex, point, priority, prog.fd, cfg.bpffs / pin)
        except Exception as exc:
            if maps is not None:
                maps.close()
            bpf.cleanup()
            if isinstance(exc, DataplaneError):
                raise
            raise DataplaneError(
                f"cannot set up the backend role on {cfg.interface}: {exc}"
            ) from exc
        in_force = dataclasses.replace(
            cfg,
            max_lb_nodes=maps.capacity("lb_nodes"),
            max_local_backends=maps.capacity("local_backends"),
            flows=maps.capacity("nat_flows"),
        )
        return cls(in_force, ifindex, bpf, maps)

    def close(self) -> None:
        """Forget the maps; the programs stay attached (a restarted agent adopts them)."""
        with self._lock:
            self.maps.close()
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None

    def detach(self) -> None:
        """Take the programs off the interface and remove every pin of the backend role."""
        with self._lock:
            for pin, point, priority in PROG_PINS.values():
                with contextlib.suppress(OSError):
                    bpfsys.tc_detach(self.ifindex, point, TC_HANDLE, priority)
                (self.cfg.bpffs / pin).unlink(missing_ok=True)
            for name in layout.NAT_MAPS:
                (self.cfg.bpffs / name).unlink(missing_ok=True)
        self.close()

    # --- desired state ------------------------------------------------------------------

    def configure(self, settings: NatSettings | None) -> None:
        """This node's address, the encapsulation's port and the MTU; None turns it off
        (every packet passes untouched)."""
        value = layout.NatConfig(layout=layout.NAT_LAYOUT_VERSION)
        if settings is not None:
            if not 0 < settings.encap_port < 65536:
                raise DataplaneError(f"encapsulation port {settings.encap_port} out of range")
            if not 576 <= settings.mtu <= 65535:
                raise DataplaneError(f"MTU {settings.mtu} out of range")
            value.node_be = _be32(settings.node_address)
            value.port_be = _be16(settings.encap_port)
            value.mss = settings.mss
        with self._lock:
            bpfsys.update(self._fds["nat_config"], ct.c_uint32(0), value)

    def set_lb_nodes(self, addresses: Iterable[str]) -> None:
        """The only sources encapsulated packets are accepted from."""
        wanted = {_be32(a) for a in addresses}
        if len(wanted) > self.cfg.max_lb_nodes:
            raise DataplaneError(
                f"{len(wanted)} load-balancer nodes, the map holds {self.cfg.max_lb_nodes}"
            )
        with self._lock:
            fd = self._fds["lb_nodes"]
            have = {k.value for k, _ in bpfsys.lookup_batch(fd, ct.c_uint32, 4)}
            for addr in wanted - have:
                bpfsys.update(fd, ct.c_uint32(addr), ct.c_uint32(1))
            for addr in have - wanted:
                bpfsys.delete(fd, ct.c_uint32(addr))

    def set_local_backends(self, backends: Iterable[LocalBackend]) -> None:
        """Exactly these translations. Translations that leave keep their flows (nat_flows)
        until those end or are evicted."""
        wanted = {bytes(_backend_key(b)): b for b in backends}
        if len(wanted) > self.cfg.max_local_backends:
            raise DataplaneError(
                f"{len(wanted)} local endpoints, the map holds {self.cfg.max_local_backends}"
            )
        with self._lock:
            fd = self._fds["local_backends"]
            have = {
                bytes(k): layout.NatBackend.from_buffer_copy(v).index
                for k, v in bpfsys.lookup_batch(fd, layout.NatBackendKey, 8)
            }
            for key in have.keys() - wanted.keys():
                bpfsys.delete(fd, layout.NatBackendKey.from_buffer_copy(key))
                self._free.append(have[key])
            for key in sorted(wanted.keys() - have.keys()):
                index = self._free.pop()
                self._zero_stats(index)
                bpfsys.update(
                    fd, layout.NatBackendKey.from_buffer_copy(key), layout.NatBackend(index=index)
                )

    def _free_indices(self) -> list[int]:
        used = {
            layout.NatBackend.from_buffer_copy(v).index
            for _, v in bpfsys.lookup_batch(self._fds["local_backends"], layout.NatBackendKey, 8)
        }
        return [i for i in range(self.cfg.max_local_backends - 1, -1, -1) if i not in used]

    def _zero_stats(self, index: int) -> None:
        zeros = ct.create_string_buffer(ct.sizeof(layout.Counters) * self.maps.ncpu)
        bpfsys.update(self._fds["be_nat_stats"], ct.c_uint32(index), zeros)

    # --- read back (nat_pinned.PinnedNatMaps) ----------------------------------------

    def local_backends(self) -> list[LocalBackend]:
        with self._lock:
            return sorted(t.backend for t in self.maps.translations())

    def translations(self) -> list[Translation]:
        with self._lock:
            return self.maps.translations()

    def lb_nodes(self) -> list[str]:
        with self._lock:
            return self.maps.lb_nodes()

    def flows(self) -> list[NatFlow]:
        with self._lock:
            return self.maps.flows()

    def counters(self) -> tuple[list[NatCounter], list[NatCounter]]:
        """(events, drops), by reason, summed over CPUs."""
        with self._lock:
            return self.maps.counters()

    def usage(self) -> list[MapUsage]:
        """lb_nodes, local_backends and nat_flows: entries in use and capacity."""
        with self._lock:
            return self.maps.usage()


def _pinned_sizes(cfg: NatConfig) -> dict[str, int]:
    """Pinned maps' capacities win over the configuration; refuse foreign layouts."""
    sizes: dict[str, int] = {}
    for name, (key_t, val_t) in layout.NAT_MAPS.items():
        path = cfg.bpffs / name
        if not path.exists():
            continue
        try:
            fd = bpfsys.obj_get(str(path))
            try:
                info = bpfsys.map_info(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DataplaneError(f"cannot open pinned map {path}: {exc}") from exc
        if info.key_size != ct.sizeof(key_t) or info.value_size != ct.sizeof(val_t):
            raise DataplaneError(
                f"pinned map {path} has key/value sizes {info.key_size}/{info.value_size}, "
                f"this version needs {ct.sizeof(key_t)}/{ct.sizeof(val_t)}"
            )
        sizes[name] = info.max_entries
    return sizes


def _check_layout(maps: PinnedNatMaps) -> None:
    found = maps.config().layout
    if found not in (0, layout.NAT_LAYOUT_VERSION):
        raise DataplaneError(
            f"pinned backend-role maps under {maps.directory} have layout {found}, this agent "
            f"knows {layout.NAT_LAYOUT_VERSION}"
        )


def compile_programs(
    cfg: NatConfig, sizes: dict[str, int], extra_cflags: tuple[str, ...] = ()
) -> BPF:
    """bcc-compile bpf/weir_tc.c against the pins in cfg.bpffs (made when missing); sizes:
    the pinned maps' own capacities, which win over cfg's."""
    from bcc import BPF  # late: the pure-Python parts work without bcc

    cflags = [
        f'-DWEIR_PIN_DIR="{cfg.bpffs}"',
        f"-DWEIR_MAX_LB_NODES={sizes.get('lb_nodes', cfg.max_lb_nodes)}",
        f"-DWEIR_MAX_LOCAL_BACKENDS={sizes.get('local_backends', cfg.max_local_backends)}",
        f"-DWEIR_NAT_FLOWS={sizes.get('nat_flows', cfg.flows)}",
        f"-DWEIR_NAT_FRAGS={layout.NAT_FRAGS}",
        f"-I{layout.BPF_DIR}",
        *extra_cflags,
    ]
    try:
        return BPF(src_file=str(layout.TC_SOURCE).encode(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception on compile/load errors
        raise DataplaneError(f"cannot build the backend-role tc programs: {exc}") from exc


def _attach(ifindex: int, point: int, priority: int, prog_fd: int, pin: Path) -> None:
    """Make prog_fd the filter at (TC_HANDLE, priority) unless the same code on the same
    maps is attached there already; pin it so tools and the next agent can name it."""
    attached = bpfsys.tc_query(ifindex, point, TC_HANDLE, priority)
    new = bpfsys.prog_info(prog_fd)
    if attached:
        with contextlib.suppress(OSError):
            fd = bpfsys.obj_get(str(pin))
            try:
                old = bpfsys.prog_info(fd)
                if (
                    old.id == attached
                    and old.tag == new.tag
                    and bpfsys.prog_map_ids(fd) == bpfsys.prog_map_ids(prog_fd)
                ):
                    return
            finally:
                os.close(fd)
    bpfsys.tc_hook_create(ifindex)
    staged = pin.with_name(pin.name + "_next")
    staged.unlink(missing_ok=True)
    bpfsys.obj_pin(prog_fd, str(staged))
    bpfsys.tc_attach(ifindex, point, prog_fd, TC_HANDLE, priority)
    os.replace(staged, pin)
