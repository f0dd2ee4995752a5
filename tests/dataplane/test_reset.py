"""The tests' shared data plane (conftest.py `dp`): once reset, it must hold what a fresh
open holds, or one test could pass or fail by what an earlier one left behind."""

from __future__ import annotations

from weir.nodeagent.dataplane import BackendTarget, Dataplane, Frontend, layout

from .support import elements, reset
from .test_xdp import FE, SEED, VIP, flows, maglev, send, targets

UDP = Frontend(f"{VIP}:53/UDP", VIP, 53, 17, "random")
POD = BackendTarget("10.244.1.10", 8080, bytes.fromhex("02000000fe01"), "10.77.1.1")


def contents(dp: Dataplane) -> dict[str, list[tuple[bytes, bytes]]]:
    """elements(), the conntrack secret left out (random per open)."""
    out = elements(dp.maps)
    [(key, raw)] = out["config"]
    config = layout.Config.from_buffer_copy(raw)
    assert config.ct_key
    config.ct_key = 0
    out["config"] = [(key, bytes(config))]
    return out


def test_a_reset_data_plane_holds_what_a_fresh_one_holds(
    dp: Dataplane, fresh_dp: Dataplane
) -> None:
    # Everything the tests change: config, services, backends, flows, drops, fragments.
    dp.set_seed(SEED)
    dp.set_encap("10.88.0.11", 6093, 1400)
    dp.set_flow_sampling(3)
    bes = [*targets(1, 4), POD]
    dp.apply_service(FE, bes, maglev(bes))
    dp.apply_service(FE, bes[1:], maglev(bes[1:]))  # the other half, a retired backend
    dp.apply_service(UDP, targets(7, 2, port=53), maglev(targets(7, 2, port=53), proto="UDP"))
    for f in flows(40):
        send(dp, f)
    send(dp, flows(1)[0], l4_bytes=3)  # a drop
    send(dp, flows(1, start=99)[0], frag=0x2000, ip_id=7)  # a first fragment
    assert contents(dp) != contents(fresh_dp)

    reset(dp)
    assert contents(dp) == contents(fresh_dp)
    assert dp.applied() == fresh_dp.applied() == {}
    assert dp.usage() == fresh_dp.usage()

    # The bookkeeping too: the same changes give the same maps (indices, halves, slots).
    for plane in (dp, fresh_dp):
        plane.set_seed(SEED)
        plane.apply_service(FE, bes, maglev(bes))
        plane.apply_service(FE, bes[2:], maglev(bes[2:]))
    assert contents(dp) == contents(fresh_dp)
    for f in flows(20):  # and packets meet the same fate
        assert send(dp, f) == send(fresh_dp, f)
