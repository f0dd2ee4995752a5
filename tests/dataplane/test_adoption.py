"""Restart: a new Dataplane adopts the pinned maps and the attached program."""

from __future__ import annotations

import ctypes as ct
import dataclasses
import os

from weir.nodeagent.dataplane import Dataplane, Frontend, bpfsys, layout, loader
from weir.nodeagent.dataplane.inspection import NatBackend, nat_services

from .conftest import Node
from .support import in_netns
from .test_xdp import FE, SEED, VIP, backend_of, flows, maglev, targets


def attached_prog_id(node: Node) -> int:
    with in_netns(node.netns):
        return bpfsys.xdp_query(loader.interface_index(node.iface)).prog_id


def test_restart_adopts_pins_and_keeps_flows(node: Node) -> None:
    other = Frontend(f"{VIP}:443/TCP", VIP, 443, 6, "random")
    bes, more = targets(1, 3), targets(50, 2)
    dp = node.open()
    try:
        dp.set_seed(SEED)
        dp.apply_service(FE, bes, maglev(bes))
        dp.apply_service(other, more, maglev(more))
        tracked = flows(100)
        before = {f: bes[backend_of(dp, f, bes)] for f in tracked}
        applied = dp.applied()
        prog = attached_prog_id(node)
    finally:
        dp.close()  # no detach: the program keeps forwarding from the pinned maps
    assert attached_prog_id(node) == prog
    assert (node.bpffs / layout.PROG_PIN).exists()

    dp = node.open()
    try:
        assert attached_prog_id(node) == prog  # same code: the attached program is kept
        assert dp.applied() == applied
        assert dp.apply_service(FE, bes, maglev(bes)) is False
        assert dp.apply_service(other, more, maglev(more)) is False
        grown = targets(1, 6)  # the table changes: tracked flows must not move
        assert dp.apply_service(FE, grown, maglev(grown)) is True
        for f in tracked:
            assert grown[backend_of(dp, f, grown)] == before[f]
        assert {u.name: u.used for u in dp.usage()}["services"] == 2
    finally:
        with in_netns(node.netns):
            dp.close(detach=True)
    assert attached_prog_id(node) == 0
    assert not any(p.name in layout.MAPS for p in node.bpffs.iterdir())


def test_restart_repairs_a_half_done_apply(node: Node) -> None:
    """A backend made live but never flipped in (agent killed mid-apply) is retired."""
    bes = targets(1, 3)
    dp = node.open()
    try:
        dp.apply_service(FE, bes, maglev(bes))
        # what a crash between "make new backends live" and the flip leaves behind
        stray = layout.Backend()
        bpfsys.lookup(dp.maps.fds["backends"], ct.c_uint32(0), stray)
        stray.port_be, stray.handle = 9999, 0
        bpfsys.update(dp.maps.fds["backends"], ct.c_uint32(100), stray)
        from weir.nodeagent.dataplane.ordering import commit

        commit(dp._commit_fd, [(layout.COMMIT_BACKEND, 100, layout.handle_of(100, 1))])
        applied = dp.applied()
    finally:
        dp.close()
    dp = node.open()
    try:
        assert dp.applied() == applied
        entry = dp.maps.backend(100)
        assert entry.handle == 0
        assert dp.apply_service(FE, bes, maglev(bes)) is False
    finally:
        dp.close()


def test_pinned_capacities_win_over_the_configuration(node: Node) -> None:
    node.open().close()
    dp = node.open(conntrack_entries=8192, max_services=128)
    try:
        assert dp.caps.services == 64 and dp.caps.ct_entries == 4096
    finally:
        dp.close()


def test_a_backend_retired_before_the_restart_comes_back_on_its_entry(node: Node) -> None:
    bes = targets(1, 3)
    dp = node.open()
    try:
        dp.apply_service(FE, bes, maglev(bes))
        before = {b.address: b.index for b in _nat(dp)}
        dp.apply_service(FE, bes[:2], maglev(bes[:2]))  # the third one leaves
    finally:
        dp.close()
    dp = node.open()
    try:
        dp.apply_service(FE, bes, maglev(bes))  # and comes back after the restart
        assert {b.address: b.index for b in _nat(dp)} == before
        for f in flows(50):
            backend_of(dp, f, bes)
    finally:
        dp.close()


def _nat(dp: Dataplane) -> list[NatBackend]:
    [svc] = nat_services(dp.maps)
    return svc.backends


def test_auto_mode_picks_generic_on_veth(node: Node) -> None:
    with in_netns(node.netns):
        dp = Dataplane.open(dataclasses.replace(node.config(), xdp_mode="auto"))
        try:
            assert dp.xdp_mode == "generic"
            assert bpfsys.xdp_query(loader.interface_index(node.iface)).mode == (
                bpfsys.XDP_ATTACHED_SKB
            )
        finally:
            dp.close(detach=True)


def test_recreated_pins_replace_the_attached_program(node: Node) -> None:
    """Same code but other maps (the pins were removed): the old program must go."""
    node.open().close()
    old = attached_prog_id(node)
    for pin in node.bpffs.iterdir():
        pin.unlink()
    dp = node.open()
    try:
        assert attached_prog_id(node) not in (0, old)
        fd = bpfsys.prog_fd_by_id(attached_prog_id(node))
        try:
            assert bpfsys.prog_map_ids(fd) == bpfsys.prog_map_ids(dp.xdp_prog_fd)
        finally:
            os.close(fd)
    finally:
        with in_netns(node.netns):
            dp.close(detach=True)
