"""Compile the XDP program with bcc, pin or adopt its maps, attach it to the uplink.

Adoption: BPF_TABLE_PINNED makes bcc open a map that is already pinned instead of
creating it, so a restarted agent keeps the live maps (tables, conntrack, counters).
The capacities compiled in are then the pinned maps' own, whatever the new
configuration says (resizing means removing the pins, which drops conntrack).
The program attached to the interface is replaced atomically, and only when its code
changed: forwarding never stops.
"""

from __future__ import annotations

import ctypes as ct
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from nodeagent.dataplane import bpfsys, layout
from nodeagent.dataplane.model import DataplaneConfig, DataplaneError

BPF_FS_MAGIC = 0xCAFE4A11
SIOCGIFHWADDR = 0x8927
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003


@dataclass(frozen=True)
class Capacities:
    services: int
    backends: int
    slot_lines: int
    ct_buckets: int

    @property
    def slots(self) -> int:
        return self.slot_lines * layout.SLOTS_PER_LINE

    @property
    def ct_entries(self) -> int:
        return self.ct_buckets * layout.CT_WAYS

    @classmethod
    def from_config(cls, cfg: DataplaneConfig) -> Capacities:
        return cls(
            services=cfg.max_services,
            backends=cfg.max_backends,
            slot_lines=-(-cfg.max_table_slots // layout.SLOTS_PER_LINE),
            ct_buckets=-(-cfg.conntrack_entries // layout.CT_WAYS),
        )


def _statfs_type(path: Path) -> int:
    class StatFs(ct.Structure):
        _fields_ = [("f_type", ct.c_long), ("rest", ct.c_byte * 120)]

    libc = ct.CDLL(None, use_errno=True)
    buf = StatFs()
    if libc.statfs(str(path).encode(), ct.byref(buf)) != 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.f_type & 0xFFFFFFFF


def prepare_pin_dir(path: Path) -> None:
    """Create the pin directory; it must live on a bpffs mount."""
    if '"' in str(path) or "\\" in str(path):
        raise DataplaneError(f"bpffs path {path} contains a quote or backslash")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fstype = _statfs_type(path)
    except OSError as exc:
        raise DataplaneError(f"cannot use bpffs directory {path}: {exc}") from exc
    if fstype != BPF_FS_MAGIC:
        raise DataplaneError(f"{path} is not on a bpffs mount (mount -t bpf bpf <dir>)")


def pinned_capacities(pin_dir: Path, wanted: Capacities) -> Capacities:
    """The capacities to compile with: pinned maps win over the configuration. Also
    refuse pins whose layout is not this version's (reading them would be garbage)."""
    sizes = {}
    for name, (key_t, val_t) in layout.MAPS.items():
        path = pin_dir / name
        if not path.exists():
            continue
        try:
            fd = bpfsys.obj_get(str(path))
        except OSError as exc:
            raise DataplaneError(f"cannot open pinned map {path}: {exc}") from exc
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        if info.key_size != ct.sizeof(key_t) or info.value_size != ct.sizeof(val_t):
            raise DataplaneError(
                f"pinned map {path} has key/value sizes {info.key_size}/{info.value_size}, "
                f"this version needs {ct.sizeof(key_t)}/{ct.sizeof(val_t)}: remove the pins "
                f"under {pin_dir} to start afresh (this drops tracked flows)"
            )
        sizes[name] = info.max_entries
    return Capacities(
        services=sizes.get("services", wanted.services),
        backends=sizes.get("backends", wanted.backends),
        slot_lines=sizes.get("slots", wanted.slot_lines),
        ct_buckets=sizes.get("conntrack", wanted.ct_buckets),
    )


def compile_program(pin_dir: Path, caps: Capacities, extra_cflags: tuple[str, ...] = ()):
    """bcc-compile bpf/weir_xdp.c against the pins in pin_dir (created when missing)."""
    from bcc import BPF  # imported late: weirctl and the pure-Python parts work without

    cflags = [
        f'-DWEIR_PIN_DIR="{pin_dir}"',
        f"-DWEIR_MAX_SERVICES={caps.services}",
        f"-DWEIR_MAX_BACKENDS={caps.backends}",
        f"-DWEIR_SLOT_LINES={caps.slot_lines}",
        f"-DWEIR_CT_BUCKETS={caps.ct_buckets}",
        f"-I{layout.BPF_DIR}",
        *extra_cflags,
    ]
    try:
        return BPF(src_file=str(layout.XDP_SOURCE).encode(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception on compile/load errors
        raise DataplaneError(f"cannot build the XDP program: {exc}") from exc


def interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise DataplaneError(f"interface {name!r} does not exist") from None


def interface_mac(name: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()[:15]))
    return raw[18:24]


def interface_driver(name: str) -> str:
    """The interface's driver name (ethtool -i), '' when it has none to tell."""
    info = bytearray(struct.pack("I", ETHTOOL_GDRVINFO) + bytes(196))
    buf = ct.create_string_buffer(bytes(info), len(info))
    ifreq = struct.pack("16sP", name.encode()[:15], ct.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError:
            return ""
    return buf.raw[4:36].split(b"\0")[0].decode(errors="replace")


def pin_program(prog_fd: int, path: Path) -> None:
    """Pin (or re-pin) the attached program so it can be found and inspected."""
    if path.exists():
        try:
            old = bpfsys.obj_get(str(path))
            same = bpfsys.prog_info(old).id == bpfsys.prog_info(prog_fd).id
            os.close(old)
        except OSError:
            same = False
        if same:
            return
        path.unlink()
    bpfsys.obj_pin(prog_fd, str(path))


_MODE_FLAGS = {
    "native": bpfsys.XDP_FLAGS_DRV_MODE,
    "generic": bpfsys.XDP_FLAGS_SKB_MODE,
}
_MODE_NAMES = {bpfsys.XDP_ATTACHED_DRV: "native", bpfsys.XDP_ATTACHED_SKB: "generic"}


def attached_program(ifindex: int) -> tuple[int, str] | None:
    """(program fd, mode) of the XDP program on the interface, or None."""
    state = bpfsys.xdp_query(ifindex)
    if not state.prog_id:
        return None
    return bpfsys.prog_fd_by_id(state.prog_id), _MODE_NAMES.get(state.mode, "other")


def attach(ifindex: int, interface: str, prog_fd: int, mode: str) -> tuple[str, bool]:
    """Make prog_fd the interface's XDP program. Returns (mode, replaced?).

    An attached Weir program with the same code and maps is kept as it is; one with other
    code (or maps: pins recreated) is swapped atomically in its current mode; a foreign
    program is an error."""
    current = attached_program(ifindex)
    if current is not None:
        old_fd, old_mode = current
        try:
            old = bpfsys.prog_info(old_fd)
            if old.name != layout.XDP_FUNC:
                raise DataplaneError(
                    f"interface {interface} already runs XDP program {old.name!r} (not Weir's)"
                )
            same_maps = bpfsys.prog_map_ids(old_fd) == bpfsys.prog_map_ids(prog_fd)
            if old.tag == bpfsys.prog_info(prog_fd).tag and same_maps:
                return old_mode, False
            if old_mode not in _MODE_FLAGS:
                raise DataplaneError(f"interface {interface}: XDP attached in mode {old_mode}")
            if mode in ("auto", old_mode):
                bpfsys.xdp_attach(ifindex, prog_fd, _MODE_FLAGS[old_mode], old_prog_fd=old_fd)
                return old_mode, True
            # A different mode was asked for: the kernel cannot swap modes in place.
            bpfsys.xdp_detach(ifindex, _MODE_FLAGS[old_mode])
        except OSError as exc:
            raise DataplaneError(f"cannot replace the XDP program on {interface}: {exc}") from exc
        finally:
            os.close(old_fd)
    tries = ["native", "generic"] if mode == "auto" else [mode]
    if mode == "auto" and interface_driver(interface) == "veth":
        # veth accepts native XDP, but frames it sends with XDP_TX only arrive when the
        # peer runs XDP too (else they count as TX drops): generic always delivers.
        tries = ["generic"]
    errors = []
    for m in tries:
        try:
            bpfsys.xdp_attach(ifindex, prog_fd, _MODE_FLAGS[m] | bpfsys.XDP_FLAGS_UPDATE_IF_NOEXIST)
            return m, True
        except OSError as exc:
            errors.append(f"{m}: {exc}")
    raise DataplaneError(f"cannot attach XDP to {interface}: {'; '.join(errors)}")


def detach(ifindex: int, interface: str) -> None:
    """Detach the interface's XDP program if it is Weir's."""
    current = attached_program(ifindex)
    if current is None:
        return
    fd, mode = current
    try:
        if bpfsys.prog_info(fd).name == layout.XDP_FUNC and mode in _MODE_FLAGS:
            bpfsys.xdp_detach(ifindex, _MODE_FLAGS[mode])
    except OSError as exc:
        raise DataplaneError(f"cannot detach XDP from {interface}: {exc}") from exc
    finally:
        os.close(fd)
