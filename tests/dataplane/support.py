"""Helpers for the data-plane tests: privileges, packets, prediction; bpffs mounts and
namespaces come from the harness (weir.lab)."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from weir.lab import bpffs
from weir.lab.netns import in_netns as in_netns  # re-exported: tests enter nodes this way
from weir.nodeagent.dataplane import Dataplane, bpfsys
from weir.nodeagent.dataplane.flowhash import maglev_slot
from weir.nodeagent.dataplane.nat import NatDataplane
from weir.nodeagent.dataplane.nat_pinned import PinnedNatMaps
from weir.nodeagent.dataplane.pinned import PinnedMaps

PREFIX = "wdp"  # the data-plane tests' namespaces, links and pins
XDP_PASS, XDP_DROP, XDP_TX = 2, 1, 3


def missing_privileges() -> str:
    """Why the kernel-facing tests cannot run here ('' when they can)."""
    if os.geteuid() != 0:
        return "needs root (BPF, bpffs mounts, network namespaces)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs bcc (Debian python3-bpfcc, seen through a --system-site-packages venv)"
    try:
        fd = bpfsys.map_create_array(4, 1, "wdp_probe")
    except OSError as exc:
        return f"cannot create BPF maps: {exc}"
    os.close(fd)
    return ""


@contextlib.contextmanager
def bpffs_mount() -> Iterator[Path]:
    """A private bpffs under a temp dir; yields its pin directory (not created yet)."""
    with bpffs.mounted(PREFIX) as top:
        yield top / "weir"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@dataclass(frozen=True)
class Flow:
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int = 6


def packet(
    flow: Flow,
    dst_mac: bytes,
    src_mac: bytes = b"\x02\x00\x00\x00\xcc\x01",
    *,
    vlan: int | None = None,
    frag: int = 0,
    ip_id: int = 0,
    l4_bytes: int | None = None,
    payload: bytes = b"",
) -> bytes:
    """An Ethernet frame carrying IPv4 + TCP/UDP (l4_bytes truncates the L4 header)."""
    eth = dst_mac + src_mac
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    eth += b"\x08\x00"
    if flow.proto == 6:
        l4 = struct.pack("!HHIIBBHHH", flow.sport, flow.dport, 1, 0, 0x50, 0x02, 512, 0, 0)
    else:
        l4 = struct.pack("!HHHH", flow.sport, flow.dport, 8 + len(payload), 0)
    l4 += payload
    if l4_bytes is not None:
        l4 = l4[:l4_bytes]
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        ip_id,
        frag,
        64,
        flow.proto,
        0,
        socket.inet_aton(flow.saddr),
        socket.inet_aton(flow.daddr),
    )
    return eth + ip + l4


def run_xdp(prog_fd: int, frame: bytes) -> tuple[int, bytes]:
    """One BPF_PROG_TEST_RUN: (XDP action, frame as the program left it)."""
    out = bpfsys.test_run(prog_fd, frame)
    return out.retval, out.data_out


def predicted_backend(
    flow: Flow, seed: int, table, size: int | None = None, client_ip: bool = False
) -> int:
    """Index into the backends list the XDP program must pick for a new flow."""
    size = size or len(table)
    f = flow
    return int(table[maglev_slot(f.saddr, f.sport, f.dport, f.proto, seed, size, client_ip)])


def reset(dp: Dataplane) -> None:
    """Bring an open data plane back to what a fresh open of it holds, without compiling
    again (the tests' shared data plane, conftest.py): every map emptied but the layout
    version, then open()'s own steps on new maps (node MAC and sampling, a new conntrack
    secret and guard, the bookkeeping rebuilt from the maps)."""
    empty(dp.maps, keep=("layout",))  # recorded once when the maps are made, as open() does
    dp.set_flow_sampling(dp.cfg.flow_sample)
    dp._set_conntrack_guard(dp.cfg.conntrack_insert_rate)
    dp._load_state()


def reset_nat(nat: NatDataplane) -> None:
    """The backend role's reset: maps emptied, free translation indices found again."""
    empty(nat.maps)
    nat._free = nat._free_indices()


def empty(maps: PinnedMaps | PinnedNatMaps, keep: tuple[str, ...] = ()) -> None:
    """Every element of every map zeroed (arrays) or deleted (hashes), but those in keep."""
    for name, fd in maps.fds.items():
        if name in keep:
            continue
        info = maps.info[name]
        size = _value_size(maps, info)
        if info.type in (bpfsys.BPF_MAP_TYPE_ARRAY, bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY):
            n = info.max_entries
            keys = (ct.c_uint32 * n)(*range(n))
            bpfsys.update_batch(fd, keys, ct.create_string_buffer(size * n), n)
            continue
        raw, _, count = bpfsys.lookup_batch_raw(fd, info.key_size, size)
        for i in range(count):
            key = ct.create_string_buffer(raw[i * info.key_size : (i + 1) * info.key_size])
            bpfsys.delete(fd, key)


def elements(maps: PinnedMaps | PinnedNatMaps) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every element of every map, sorted by key."""
    out = {}
    for name, info in maps.info.items():
        size = _value_size(maps, info)
        keys, values, n = bpfsys.lookup_batch_raw(maps.fds[name], info.key_size, size)
        ks = info.key_size
        out[name] = sorted(
            (keys[i * ks : (i + 1) * ks], values[i * size : (i + 1) * size]) for i in range(n)
        )
    return out


def _value_size(maps: PinnedMaps | PinnedNatMaps, info: bpfsys.MapInfo) -> int:
    """A value's size as the map syscalls take it (per-CPU maps: one 8-aligned per CPU)."""
    if info.type == bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY:
        return -(-info.value_size // 8) * 8 * maps.ncpu
    return info.value_size
