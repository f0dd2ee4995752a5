"""Adoption without CAP_SYS_ADMIN: the attached program is found through its pins only.

BPF_PROG_GET_FD_BY_ID (the by-id fallback) is made to fail as it does without
CAP_SYS_ADMIN; bcc still needs that capability for the pinned maps (tests/kube/
test_agent_caps.py), so this runs as root with only the program lookup taken away."""

from __future__ import annotations

import errno

import pytest
from weir.nodeagent.dataplane import DataplaneError, bpfsys, layout, loader

from .conftest import Node
from .support import in_netns


def attached_prog_id(node: Node) -> int:
    with in_netns(node.netns):
        return bpfsys.xdp_query(loader.interface_index(node.iface)).prog_id


@pytest.fixture
def no_prog_by_id(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(prog_id: int) -> int:
        raise OSError(errno.EPERM, f"program id {prog_id}: Operation not permitted")

    monkeypatch.setattr(bpfsys, "prog_fd_by_id", refuse)


def test_a_program_left_under_the_staging_pin_is_adopted(node: Node, no_prog_by_id) -> None:
    """An agent killed between attaching and renaming the pin leaves only the staging name."""
    node.open().close()
    prog = attached_prog_id(node)
    (node.bpffs / layout.PROG_PIN).rename(node.bpffs / f"{layout.PROG_PIN}_next")
    dp = node.open()
    try:
        assert attached_prog_id(node) == prog  # kept, not replaced
        assert sorted(p.name for p in node.bpffs.glob("prog_*")) == [layout.PROG_PIN]
    finally:
        with in_netns(node.netns):
            dp.close(detach=True)
    assert attached_prog_id(node) == 0
    assert not list(node.bpffs.iterdir())


def test_an_attached_program_no_pin_names_is_refused(node: Node, no_prog_by_id) -> None:
    """It may be another tool's: refused, left running; once detached, open works."""
    node.open().close()
    prog = attached_prog_id(node)
    (node.bpffs / layout.PROG_PIN).unlink()
    with pytest.raises(DataplaneError, match="CAP_SYS_ADMIN"):
        node.open()
    assert attached_prog_id(node) == prog
    with in_netns(node.netns):
        bpfsys.xdp_detach(loader.interface_index(node.iface), bpfsys.XDP_FLAGS_SKB_MODE)
    dp = node.open()
    try:
        assert attached_prog_id(node) not in (0, prog)
    finally:
        with in_netns(node.netns):
            dp.close(detach=True)
