"""Pure-Python parts of the data plane: no kernel needed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from weir.nodeagent.dataplane import BackendTarget, DataplaneConfig, DataplaneError, Frontend
from weir.nodeagent.dataplane.canonical import canonicalise
from weir.nodeagent.dataplane.flowhash import ct_position, flow_hash, reduce
from weir.nodeagent.dataplane.pools import BackendPool, GracePool
from weir.nodeagent.dataplane.regions import RegionAllocator

FE = Frontend("10.0.0.10:80/TCP", "10.0.0.10", 80, 6, "maglev")


def be(i: int) -> BackendTarget:
    return BackendTarget(f"10.1.0.{i}", 8080, bytes([2, 0, 0, 0, 0, i]))


def test_regions_first_fit_and_merge() -> None:
    r = RegionAllocator(100)
    a, b, c = r.alloc(30), r.alloc(30), r.alloc(30)
    assert (a, b, c) == (0, 30, 60)
    assert r.alloc(20) is None and r.free_slots == 10
    r.release(30, 30)
    assert r.fits([30]) and not r.fits([31])
    assert r.fits([40], releasing=[(60, 30)])  # 30..100 once c is back
    r.release(0, 30)
    r.release(60, 30)
    assert r.free_slots == 100 and r.alloc(100) == 0


def test_regions_reject_double_free_and_overlap() -> None:
    r = RegionAllocator(100, used=[(10, 10)])
    with pytest.raises(ValueError):
        r.release(50, 10)
    with pytest.raises(ValueError):
        RegionAllocator(100, used=[(10, 10), (15, 10)])


def test_grace_pool_reuses_only_after_grace() -> None:
    p = GracePool(2)
    a, b = p.take(), p.take()
    p.release(a)
    assert p.free_now == 0 and p.available == 1
    p.grace_passed()
    assert p.take() == a
    assert p.used == 2 and b == 1


def test_backend_pool_revives_until_reused() -> None:
    p = BackendPool(2, [0, 0])
    i = p.take()
    assert p.next_gen(i) == 1
    p.retire(i, "x")
    assert p.can_revive("x")
    assert p.revive("x") == i and p.available == 1
    p.retire(i, "x")
    p.grace_passed()
    assert p.take() == 1  # never-used indices first, then the oldest released
    assert p.take() == i  # the retired index goes to someone else: no longer revivable
    assert not p.can_revive("x")


def test_pool_claims_an_index_it_never_handed_out() -> None:
    p = GracePool(10, in_use=[2])
    p.claim(5)  # e.g. a retired entry found when adopting pins, revived
    assert sorted(p.take() for _ in range(8)) == [0, 1, 3, 4, 6, 7, 8, 9]
    assert p.available == 0


def test_backend_generation_wraps_but_never_zero() -> None:
    p = BackendPool(1, [(1 << 20) - 1])
    assert p.next_gen(0) == 1


def test_spec_is_canonical_whatever_the_order() -> None:
    table = np.array([0, 1, 2, 0, 1], dtype=np.uint32)
    one = canonicalise(FE, [be(1), be(2), be(3)], table)
    # the same content, listed in another order (table renumbered accordingly)
    two = canonicalise(FE, [be(3), be(1), be(2)], np.array([1, 2, 0, 1, 2]))
    assert one.tag == two.tag
    assert one.backends == two.backends
    assert np.array_equal(one.table, two.table)
    three = canonicalise(FE, [be(1), be(2), be(3)], np.array([0, 1, 2, 0, 2]))
    assert three.tag != one.tag
    sticky = replace(FE, affinity="client_ip")  # an affinity change must be applied
    assert canonicalise(sticky, [be(1), be(2), be(3)], table).tag != one.tag


@pytest.mark.parametrize(
    ("fe", "backends", "table", "message"),
    [
        (Frontend("x", "2001:db8::1", 80, 6), [], [], "IPv6"),
        (Frontend("x", "10.0.0.1", 80, 132), [], [], "protocol"),
        (Frontend("x", "10.0.0.1", 0, 6), [], [], "port"),
        (FE, [be(1), be(1)], [0], "twice"),
        (FE, [be(1)], [0, 1], "outside"),
        (FE, [be(1)], [], "non-empty"),
        (FE, [BackendTarget("10.1.0.1", 80, b"\x02")], [0], "MAC"),
        (Frontend("x", "10.0.0.1", 80, 6, affinity="sticky"), [], [], "affinity"),  # type: ignore[arg-type]
    ],
)
def test_spec_rejects_bad_input(fe, backends, table, message) -> None:
    with pytest.raises(DataplaneError, match=message):
        canonicalise(fe, backends, np.asarray(table, dtype=np.int64))


def test_spec_without_backends_ignores_the_table() -> None:
    spec = canonicalise(FE, [], np.zeros(0, dtype=np.uint32))
    assert spec.size == 0


def test_config_validation() -> None:
    with pytest.raises(DataplaneError, match="max_backends"):
        DataplaneConfig("eth0", max_backends=1 << 21).validate()
    with pytest.raises(DataplaneError, match="xdp mode"):
        DataplaneConfig("eth0", xdp_mode="fast").validate()  # type: ignore[arg-type]


def test_flow_hash_spreads_and_reduce_is_in_range() -> None:
    slots = [reduce(flow_hash("192.168.1.1", 1024 + i, 80, 6, 7), 251) for i in range(25100)]
    counts = np.bincount(slots, minlength=251)
    assert counts.min() > 50 and counts.max() < 150  # ~100 each
    assert flow_hash("192.168.1.1", 1, 80, 6, 7) != flow_hash("192.168.1.1", 1, 80, 6, 8)


def test_ct_fingerprints_rarely_collide() -> None:
    seen = {
        ct_position(f"10.0.{i >> 8}.{i & 255}", "10.0.0.10", 40000, 80, 6, 0x1234, 1 << 16)
        for i in range(20000)
    }
    assert len(seen) == 20000


def test_ct_placement_depends_on_the_secret() -> None:
    """Without the node's secret nobody can tell which flows share a bucket."""
    flows = [(f"10.0.{i >> 8}.{i & 255}", "10.0.0.10", 40000, 80, 6) for i in range(2000)]
    one = [ct_position(*f, 0x1111_2222_3333_4444, 1 << 16)[0] for f in flows]
    other = [ct_position(*f, 0x1111_2222_3333_4445, 1 << 16)[0] for f in flows]
    same = sum(a == b for a, b in zip(one, other, strict=True))
    assert same < 10  # ~2000/65536 expected by chance
