"""Compile the XDP program with bcc, pin or adopt its maps, attach it to the uplink.

Adoption: BPF_TABLE_PINNED makes bcc open a map that is already pinned instead of
creating it, so a restarted agent keeps the live maps (tables, conntrack, counters).
The capacities compiled in are then the pinned maps' own, whatever the new
configuration says (resizing means removing the pins, which drops conntrack).
The program attached to the interface is replaced atomically, and only when its code
changed: forwarding never stops. It is identified through its pin (BPF_OBJ_GET), not by
id (BPF_PROG_GET_FD_BY_ID is CAP_SYS_ADMIN only), and pinned before it is attached so
that an agent killed at any point leaves it named.
"""

from __future__ import annotations

import ctypes as ct
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.model import DataplaneConfig, DataplaneError

if TYPE_CHECKING:
    from bcc import BPF

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

    def never_fits(self, backends: int, slots: int) -> str:
        """Why a service that needs this many backend entries and table slots at once can
        never be held, whatever else is freed ("" when it can)."""
        if backends > self.backends:
            return (
                f"needs {backends} backend entries, the map holds {self.backends} (--max-backends)"
            )
        if slots > self.slots:
            return f"needs {slots} table slots, the pool holds {self.slots} (--max-table-slots)"
        return ""

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


def compile_program(pin_dir: Path, caps: Capacities, extra_cflags: tuple[str, ...] = ()) -> BPF:
    """bcc-compile bpf/weir_xdp.c against the pins in pin_dir (created when missing)."""
    from bcc import BPF  # imported late: weirctl and the pure-Python parts work without

    cflags = [
        f'-DWEIR_PIN_DIR="{pin_dir}"',
        f"-DWEIR_MAX_SERVICES={caps.services}",
        f"-DWEIR_MAX_BACKENDS={caps.backends}",
        f"-DWEIR_SLOT_LINES={caps.slot_lines}",
        f"-DWEIR_CT_BUCKETS={caps.ct_buckets}",
        f"-DWEIR_FRAG_ENTRIES={layout.FRAG_ENTRIES}",
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


_MODE_FLAGS = {
    "native": bpfsys.XDP_FLAGS_DRV_MODE,
    "generic": bpfsys.XDP_FLAGS_SKB_MODE,
}
_MODE_NAMES = {bpfsys.XDP_ATTACHED_DRV: "native", bpfsys.XDP_ATTACHED_SKB: "generic"}


def _staged(pin: Path) -> Path:
    return pin.with_name(pin.name + "_next")  # bpffs refuses dots in names


def _stage(prog_fd: int, pin: Path) -> None:
    """Pin prog_fd under the staging name before attaching it: whatever happens next, one
    of the two names holds the attached program, so the next agent can identify it."""
    staged = _staged(pin)
    staged.unlink(missing_ok=True)
    bpfsys.obj_pin(prog_fd, str(staged))


def _commit_pin(pin: Path) -> None:
    """The staged (now attached) program becomes the pin, atomically (a bpffs rename)."""
    os.replace(_staged(pin), pin)


def _open_attached(prog_id: int, pin: Path) -> int | None:
    """A file descriptor of the attached program prog_id, or None when it cannot be opened.

    Through its pin (BPF_OBJ_GET needs CAP_BPF only), the way the agent finds its own
    program; by id only when no pin names it (pins removed, or another tool's program), as
    BPF_PROG_GET_FD_BY_ID needs CAP_SYS_ADMIN."""
    for path in (pin, _staged(pin)):
        try:
            fd = bpfsys.obj_get(str(path))
        except FileNotFoundError:
            continue
        try:
            if bpfsys.prog_info(fd).id == prog_id:
                return fd
        except OSError:
            pass  # not a program
        os.close(fd)
    try:
        return bpfsys.prog_fd_by_id(prog_id)
    except PermissionError:
        return None


def attach(ifindex: int, interface: str, prog_fd: int, mode: str, pin: Path) -> tuple[str, bool]:
    """Make prog_fd the interface's XDP program, pinned at pin. Returns (mode, replaced?).

    An attached Weir program with the same code and maps is kept as it is; one with other
    code (or maps: pins recreated) is swapped atomically in its current mode; a foreign
    program is an error, and so is one that no pin names when the process cannot read
    programs by id (no CAP_SYS_ADMIN): it cannot tell Weir's from another tool's."""
    state = bpfsys.xdp_query(ifindex)
    if state.prog_id:
        old_mode = _MODE_NAMES.get(state.mode, "other")
        try:
            old_fd = _open_attached(state.prog_id, pin)
        except OSError as exc:
            raise DataplaneError(f"cannot read the XDP program on {interface}: {exc}") from exc
        if old_fd is None:
            raise DataplaneError(
                f"interface {interface} already runs XDP program id {state.prog_id}, which no "
                f"pin under {pin.parent} names, and telling whether it is Weir's needs "
                f"CAP_SYS_ADMIN; if it is (its pins were removed), detach it first "
                f"(ip link set dev {interface} xdp off)"
            )
        try:
            old = bpfsys.prog_info(old_fd)
            if old.name != layout.XDP_FUNC:
                raise DataplaneError(
                    f"interface {interface} already runs XDP program {old.name!r} (not Weir's)"
                )
            same_maps = bpfsys.prog_map_ids(old_fd) == bpfsys.prog_map_ids(prog_fd)
            if old.tag == bpfsys.prog_info(prog_fd).tag and same_maps:
                _stage(old_fd, pin)
                _commit_pin(pin)
                return old_mode, False
            if old_mode not in _MODE_FLAGS:
                raise DataplaneError(f"interface {interface}: XDP attached in mode {old_mode}")
            if mode in ("auto", old_mode):
                _stage(prog_fd, pin)
                bpfsys.xdp_attach(ifindex, prog_fd, _MODE_FLAGS[old_mode], old_prog_fd=old_fd)
                _commit_pin(pin)
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
    try:
        _stage(prog_fd, pin)
        for m in tries:
            try:
                flags = _MODE_FLAGS[m] | bpfsys.XDP_FLAGS_UPDATE_IF_NOEXIST
                bpfsys.xdp_attach(ifindex, prog_fd, flags)
            except OSError as exc:
                errors.append(f"{m}: {exc}")
                continue
            _commit_pin(pin)
            return m, True
        _staged(pin).unlink(missing_ok=True)
    except OSError as exc:
        raise DataplaneError(f"cannot pin the XDP program at {pin}: {exc}") from exc
    raise DataplaneError(f"cannot attach XDP to {interface}: {'; '.join(errors)}")


def detach(ifindex: int, interface: str, pin: Path) -> None:
    """Detach the interface's XDP program if it is Weir's (found as in attach), and remove
    its pins."""
    fd = None
    try:
        state = bpfsys.xdp_query(ifindex)
        fd = _open_attached(state.prog_id, pin) if state.prog_id else None
        mode = _MODE_NAMES.get(state.mode, "other")
        if fd is not None and bpfsys.prog_info(fd).name == layout.XDP_FUNC and mode in _MODE_FLAGS:
            bpfsys.xdp_detach(ifindex, _MODE_FLAGS[mode])
        for path in (pin, _staged(pin)):
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise DataplaneError(f"cannot detach XDP from {interface}: {exc}") from exc
    finally:
        if fd is not None:
            os.close(fd)
