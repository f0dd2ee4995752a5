"""Thin ctypes bindings to libbpf.so.1 for what bcc's Python API lacks or does slowly.

Pinned objects, map element and batch operations, map/program info, mmap of
BPF_F_MMAPABLE arrays, BPF_PROG_TEST_RUN and XDP attach/query. weirctl uses these
to read pinned maps without compiling anything. libbpf >= 1.0 returns -errno; every
failure raises OSError with the errno and what was being done.
"""

from __future__ import annotations

import ctypes as ct
import errno
import mmap
import os
import sys
from dataclasses import dataclass
from typing import Any

_lib: ct.CDLL | None = None

BPF_ANY = 0
BPF_NOEXIST = 1

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_F_MMAPABLE = 1 << 10
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2


class _TestRunOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


class _BatchOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


class _MapCreateOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("btf_fd", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("map_extra", ct.c_uint64),
        ("numa_node", ct.c_uint32),
        ("map_ifindex", ct.c_uint32),
    ]


class _XdpAttachOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("old_prog_fd", ct.c_int)]


class _XdpQueryOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("prog_id", ct.c_uint32),
        ("drv_prog_id", ct.c_uint32),
        ("hw_prog_id", ct.c_uint32),
        ("skb_prog_id", ct.c_uint32),
        ("attach_mode", ct.c_uint8),
    ]


def lib() -> ct.CDLL:
    global _lib
    if _lib is None:
        _lib = ct.CDLL("libbpf.so.1", use_errno=True)
    return _lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        code = -ret
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return ret


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"open pinned {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def _addr(buf: Any) -> int:
    return ct.addressof(buf)


def lookup(fd: int, key: ct.Structure | ct.Array | Any, value: Any) -> bool:
    """Fill value (a ctypes object) with the element of key; False when absent."""
    ret = lib().bpf_map_lookup_elem(fd, ct.c_void_p(_addr(key)), ct.c_void_p(_addr(value)))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "map lookup")
    return True


def update(fd: int, key: Any, value: Any, flags: int = BPF_ANY) -> None:
    ret = lib().bpf_map_update_elem(
        fd, ct.c_void_p(_addr(key)), ct.c_void_p(_addr(value)), ct.c_uint64(flags)
    )
    _check(ret, "map update")


def delete(fd: int, key: Any) -> bool:
    ret = lib().bpf_map_delete_elem(fd, ct.c_void_p(_addr(key)))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "map delete")
    return True


def update_batch(fd: int, keys: Any, values: Any, count: int) -> None:
    """keys and values are ctypes arrays (or buffers) holding count elements."""
    if count == 0:
        return
    n = ct.c_uint32(count)
    opts = _BatchOpts(sz=ct.sizeof(_BatchOpts))
    ret = lib().bpf_map_update_batch(
        fd, ct.c_void_p(_addr(keys)), ct.c_void_p(_addr(values)), ct.byref(n), ct.byref(opts)
    )
    _check(ret, "map batch update")


def lookup_batch_raw(
    fd: int, key_size: int, value_size: int, chunk: int = 4096
) -> tuple[bytes, bytes, int]:
    """Every (key, value) of a map as two buffers of packed elements, and the count.
    value_size is the per-element size as the syscall returns it (per-CPU maps:
    round_up(size, 8) * ncpu)."""
    keys = ct.create_string_buffer(key_size * chunk)
    values = ct.create_string_buffer(value_size * chunk)
    in_batch = ct.c_uint64(0)
    out_batch = ct.c_uint64(0)
    opts = _BatchOpts(sz=ct.sizeof(_BatchOpts))
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    total = 0
    first = True
    while True:
        n = ct.c_uint32(chunk)
        ret = lib().bpf_map_lookup_batch(
            fd,
            None if first else ct.byref(in_batch),
            ct.byref(out_batch),
            keys,
            values,
            ct.byref(n),
            ct.byref(opts),
        )
        done = ret == -errno.ENOENT
        if ret < 0 and not done:
            _check(ret, "map batch lookup")
        key_parts.append(keys.raw[: n.value * key_size])
        value_parts.append(values.raw[: n.value * value_size])
        total += n.value
        if done:
            return b"".join(key_parts), b"".join(value_parts), total
        in_batch.value = out_batch.value
        first = False


def lookup_batch(
    fd: int, key_type: type[ct.Structure] | type[ct.c_uint32], value_size: int
) -> list[tuple[Any, bytes]]:
    """Every (key, value bytes) of a map, keys as key_type objects."""
    ks = ct.sizeof(key_type)
    keys, values, count = lookup_batch_raw(fd, ks, value_size)
    return [
        (
            key_type.from_buffer_copy(keys[i * ks : (i + 1) * ks]),
            values[i * value_size : (i + 1) * value_size],
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    tag: bytes
    name: str


def _info(fd: int) -> bytes:
    buf = ct.create_string_buffer(256)
    n = ct.c_uint32(256)
    _check(lib().bpf_obj_get_info_by_fd(fd, buf, ct.byref(n)), "object info")
    return buf.raw


def map_info(fd: int) -> MapInfo:
    raw = _info(fd)
    f = [int.from_bytes(raw[i * 4 : i * 4 + 4], sys.byteorder) for i in range(6)]
    name = raw[24:40].split(b"\0")[0].decode()
    return MapInfo(f[0], f[1], f[2], f[3], f[4], f[5], name)


def prog_info(fd: int) -> ProgInfo:
    raw = _info(fd)
    # struct bpf_prog_info: type, id, tag[8], ..., name[16] at offset 64
    name = raw[64:80].split(b"\0")[0].decode()
    return ProgInfo(
        int.from_bytes(raw[0:4], sys.byteorder),
        int.from_bytes(raw[4:8], sys.byteorder),
        raw[8:16],
        name,
    )


def prog_map_ids(fd: int) -> frozenset[int]:
    """Ids of the maps a program uses (struct bpf_prog_info nr_map_ids / map_ids)."""
    raw = _info(fd)
    count = int.from_bytes(raw[52:56], sys.byteorder)
    ids = (ct.c_uint32 * max(count, 1))()
    buf = ct.create_string_buffer(256)
    ct.memmove(ct.addressof(buf) + 52, ct.byref(ct.c_uint32(count)), 4)
    ct.memmove(ct.addressof(buf) + 56, ct.byref(ct.c_uint64(ct.addressof(ids))), 8)
    n = ct.c_uint32(256)
    _check(lib().bpf_obj_get_info_by_fd(fd, buf, ct.byref(n)), "program map ids")
    return frozenset(ids[:count])


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(ct.c_uint32(prog_id)), f"program id {prog_id}")


def map_create_array(
    value_size: int,
    max_entries: int,
    name: str = "",
    *,
    per_cpu: bool = False,
    mmapable: bool = False,
) -> int:
    opts = _MapCreateOpts(sz=ct.sizeof(_MapCreateOpts), map_flags=BPF_F_MMAPABLE * mmapable)
    kind = BPF_MAP_TYPE_PERCPU_ARRAY if per_cpu else BPF_MAP_TYPE_ARRAY
    return _check(
        lib().bpf_map_create(
            kind, name.encode() or None, 4, value_size, max_entries, ct.byref(opts)
        ),
        "create array map",
    )


def map_create_array_of_maps(inner_fd: int, max_entries: int, name: str = "") -> int:
    opts = _MapCreateOpts(sz=ct.sizeof(_MapCreateOpts), inner_map_fd=inner_fd)
    return _check(
        lib().bpf_map_create(
            BPF_MAP_TYPE_ARRAY_OF_MAPS,
            name.encode() or None,
            4,
            4,
            max_entries,
            ct.byref(opts),
        ),
        "create array-of-maps",
    )


def map_mmap(fd: int, size: int, writable: bool) -> mmap.mmap:
    """Map a BPF_F_MMAPABLE array (size rounded up to whole pages)."""
    page = mmap.PAGESIZE
    length = (size + page - 1) // page * page
    # ACCESS_WRITE is a shared read-write mapping; ACCESS_READ a read-only one whose
    # buffer Python (and numpy) also treat as read-only.
    return mmap.mmap(fd, length, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)


@dataclass(frozen=True)
class TestRun:
    retval: int
    duration_ns: int  # average per repetition, as the kernel measured it
    data_out: bytes


def test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int | None = None) -> TestRun:
    """BPF_PROG_TEST_RUN: run the program on data `repeat` times in the kernel."""
    inp = ct.create_string_buffer(data, len(data))
    size_out = out_size if out_size is not None else len(data) + 256
    out = ct.create_string_buffer(size_out)
    opts = _TestRunOpts(
        sz=ct.sizeof(_TestRunOpts),
        data_in=_addr(inp),
        data_out=_addr(out),
        data_size_in=len(data),
        data_size_out=size_out,
        repeat=repeat,
    )
    _check(lib().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(opts.retval, opts.duration, out.raw[: opts.data_size_out])


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: int = -1) -> None:
    opts = _XdpAttachOpts(sz=ct.sizeof(_XdpAttachOpts), old_prog_fd=old_prog_fd)
    if old_prog_fd >= 0:
        flags |= XDP_FLAGS_REPLACE
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, ct.c_uint32(flags), ct.byref(opts)), "XDP attach")


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(lib().bpf_xdp_detach(ifindex, ct.c_uint32(flags), None), "XDP detach")


@dataclass(frozen=True)
class XdpState:
    prog_id: int  # 0 when none
    mode: int  # XDP_ATTACHED_*


def xdp_query(ifindex: int) -> XdpState:
    opts = _XdpQueryOpts(sz=ct.sizeof(_XdpQueryOpts))
    _check(lib().bpf_xdp_query(ifindex, 0, ct.byref(opts)), "XDP query")
    return XdpState(opts.prog_id, opts.attach_mode)


BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2
BPF_TC_F_REPLACE = 1


class _TcHook(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("ifindex", ct.c_int),
        ("attach_point", ct.c_int),
        ("parent", ct.c_uint32),
    ]


class _TcOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("prog_fd", ct.c_int),
        ("flags", ct.c_uint32),
        ("prog_id", ct.c_uint32),
        ("handle", ct.c_uint32),
        ("priority", ct.c_uint32),
    ]


def _tc_hook(ifindex: int, point: int) -> _TcHook:
    return _TcHook(sz=ct.sizeof(_TcHook), ifindex=ifindex, attach_point=point)


def tc_hook_create(ifindex: int) -> None:
    """The interface's clsact qdisc (kept when it exists: other programs may use it)."""
    ret = lib().bpf_tc_hook_create(ct.byref(_tc_hook(ifindex, BPF_TC_INGRESS)))
    if ret != -errno.EEXIST:
        _check(ret, "create clsact qdisc")


def tc_attach(ifindex: int, point: int, prog_fd: int, handle: int, priority: int) -> None:
    """Attach (or atomically replace) the direct-action filter at (handle, priority)."""
    opts = _TcOpts(
        sz=ct.sizeof(_TcOpts),
        prog_fd=prog_fd,
        flags=BPF_TC_F_REPLACE,
        handle=handle,
        priority=priority,
    )
    _check(lib().bpf_tc_attach(ct.byref(_tc_hook(ifindex, point)), ct.byref(opts)), "tc attach")


def tc_query(ifindex: int, point: int, handle: int, priority: int) -> int:
    """The id of the program at (handle, priority), 0 when there is none."""
    opts = _TcOpts(sz=ct.sizeof(_TcOpts), handle=handle, priority=priority)
    ret = lib().bpf_tc_query(ct.byref(_tc_hook(ifindex, point)), ct.byref(opts))
    if ret in (-errno.ENOENT, -errno.EINVAL):
        return 0
    _check(ret, "tc query")
    return opts.prog_id


def tc_detach(ifindex: int, point: int, handle: int, priority: int) -> None:
    opts = _TcOpts(sz=ct.sizeof(_TcOpts), handle=handle, priority=priority)
    ret = lib().bpf_tc_detach(ct.byref(_tc_hook(ifindex, point)), ct.byref(opts))
    if ret not in (-errno.ENOENT, -errno.EINVAL):
        _check(ret, "tc detach")
