"""nodeagent/dataplane/layout.py mirrors bpf/weir_maps.h: compare with bcc's own types."""

from __future__ import annotations

import ctypes as ct

from weir.nodeagent.dataplane import Dataplane, layout

from .support import bpffs_mount


def fields(t: type) -> list[tuple[str, int, int]]:
    """(name, offset, size) of every leaf field, nested structs and arrays flattened."""
    if not hasattr(t, "_fields_"):
        return [("", 0, ct.sizeof(t))]
    out = []
    for name, ftype, *_ in t._fields_:
        offset = getattr(t, name).offset
        out += [(f"{name}.{n}".rstrip("."), offset + o, s) for n, o, s in fields(ftype)]
    return out


def test_python_layouts_match_the_c_header(dp: Dataplane) -> None:
    bpf = dp._bpf  # the shared data plane's: bcc's types do not depend on the sizes
    for name, (key_t, value_t) in layout.MAPS.items():
        table = bpf[name.encode()]
        leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU: one CPU's value
        assert ct.sizeof(table.Key) == ct.sizeof(key_t), name
        assert ct.sizeof(leaf) == ct.sizeof(value_t), name
        if hasattr(value_t, "_fields_"):
            assert fields(leaf) == fields(value_t), name


def test_python_layouts_match_the_backend_node_header(privileged: None) -> None:
    from weir.nodeagent.dataplane.nat import NatConfig, compile_programs

    with bpffs_mount() as pins:
        pins.mkdir()
        bpf = compile_programs(NatConfig(interface="lo", bpffs=pins), {})
        try:
            for name, (key_t, value_t) in layout.NAT_MAPS.items():
                table = bpf[name.encode()]
                leaf = getattr(table, "sLeaf", table.Leaf)
                assert ct.sizeof(table.Key) == ct.sizeof(key_t), name
                assert ct.sizeof(leaf) == ct.sizeof(value_t), name
                if hasattr(value_t, "_fields_"):
                    assert fields(leaf) == fields(value_t), name
                if hasattr(key_t, "_fields_"):
                    assert fields(table.Key) == fields(key_t), name
        finally:
            bpf.cleanup()


def test_layout_versions_match_the_c_headers() -> None:
    for header, name, value in (
        ("weir_maps.h", "WEIR_LAYOUT_VERSION", layout.LAYOUT_VERSION),
        ("weir_nat_maps.h", "NAT_LAYOUT_VERSION", layout.NAT_LAYOUT_VERSION),
    ):
        text = (layout.BPF_DIR / header).read_text()
        assert f"#define {name} {value}\n" in text, (header, name)
