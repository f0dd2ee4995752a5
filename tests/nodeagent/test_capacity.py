"""A load-balancer node whose maps cannot hold every service: which services it serves (the
same on every node, whatever each applied before), the room an update needs, and what it
announces when a table cannot be made current.

No kernel here: the data plane is a stand-in that refuses what the real one would (the
real one: test_agent.py)."""

from __future__ import annotations

from weir.common.pb import pb
from weir.nodeagent.admission import admit
from weir.nodeagent.agent import Agent
from weir.nodeagent.service import from_pb

from tests.nodeagent.standins import (
    FakeDataplane,
    Opener,
    RecordingBGP,
    backend,
    capacities,
    errors,
    lb_role,
    service,
    view,
)

HOST = "10.88.0.21"  # resolves: its ports make distinct backends


def aged(vip: str, created: int, backends: int = 1, *, owner: str = "", size: int = 251):
    svc = service(vip, *(backend(HOST, port=8000 + i) for i in range(backends)))
    svc.created_unix_seconds, svc.service, svc.maglev_table_size = created, owner, size
    return svc


def admitted(caps, *services: pb.Service) -> list[str]:
    return list(admit(map(from_pb, services), caps).admitted)


def test_the_oldest_services_are_served_first() -> None:
    caps = capacities(services=2)
    young, old, older = aged("192.0.2.1", 300), aged("192.0.2.9", 200), aged("192.0.2.5", 100)
    assert admitted(caps, young, old, older) == [older.id, old.id]
    result = admit(map(from_pb, (young, old, older)), caps)
    assert result.refused == {
        young.id: "does not fit on this node: all 2 service entries are taken, after the "
        "Services served before it (the oldest first, on every node alike)"
    }
    # Unknown creation times come last; then namespace/name, then the frontend id.
    untimed = [aged("192.0.2.7", 0, owner="b/x"), aged("192.0.2.8", 0, owner="a/y")]
    assert admitted(capacities(services=3), *untimed, young) == [
        young.id,
        "192.0.2.8:80/TCP",
        "192.0.2.7:80/TCP",
    ]


def test_the_largest_services_backends_are_kept_free_for_its_updates() -> None:
    caps = capacities(backends=10)
    a, b = aged("192.0.2.1", 100, backends=4), aged("192.0.2.2", 200, backends=2)
    result = admit(map(from_pb, (a, b)), caps)
    assert list(result.admitted) == [a.id, b.id] and result.reserved == 4
    c = aged("192.0.2.3", 300, backends=3)  # 6 + 3 used, and 4 kept free: 13 > 10
    result = admit(map(from_pb, (a, b, c)), caps)
    assert list(result.admitted) == [a.id, b.id]
    assert (
        "its 3 backends need as many backend entries, 0 of 10 are left (4 kept free for "
        in (result.refused[c.id])
    )


def test_what_can_never_fit_is_refused_as_such() -> None:
    caps = capacities(backends=10, slots=1024)
    big = aged("192.0.2.1", 100, backends=6)
    wide = aged("192.0.2.2", 100, size=521)
    bad = aged("192.0.2.3", 100, size=253)
    result = admit(map(from_pb, (big, wide, bad)), caps)
    assert not result.admitted
    why = "; while a service's backends are replaced, old and new coexist, and both halves of "
    assert result.refused[big.id] == (
        "can never fit on this node: needs 12 backend entries, the map holds 10 (--max-backends)"
        + why
        + "its table are kept"
    )
    assert result.refused[wide.id] == (
        "can never fit on this node: needs 1042 table slots, the pool holds 1024 "
        "(--max-table-slots)" + why + "its table are kept"
    )
    assert "not prime" in result.refused[bad.id]


async def test_a_fresh_node_serves_the_services_the_old_nodes_serve() -> None:
    caps = capacities(services=2)
    old1, old2 = aged("192.0.2.3", 100), aged("192.0.2.4", 200)
    young = aged("192.0.2.1", 300)  # the first by id
    old_dp, fresh_dp = FakeDataplane(caps=caps), FakeDataplane(caps=caps)
    old_node, fresh_node = Agent([lb_role(Opener(old_dp))]), Agent([lb_role(Opener(fresh_dp))])
    await old_node.handle(view(1, old1, old2))
    old_ack = await old_node.handle(view(2, old1, old2, young))
    fresh_ack = await fresh_node.handle(view(2, old1, old2, young))
    assert set(old_dp.services) == set(fresh_dp.services) == {old1.id, old2.id}
    assert errors(old_ack) == errors(fresh_ack)
    assert "does not fit on this node" in errors(fresh_ack)[young.id]
    status = await fresh_node.status()
    assert [e.service_id for e in status.service_errors] == [young.id]

    # The oldest grows beyond what the maps hold beside the others: the youngest makes room,
    # on every node alike.
    grown = aged("192.0.2.3", 100, backends=3)
    caps_b = capacities(services=2, backends=7)  # 3 + 1 used, 3 kept free
    dp = FakeDataplane(caps=caps_b)
    agent = Agent([lb_role(Opener(dp))])
    await agent.handle(view(1, old1, old2))
    ack = await agent.handle(view(2, grown, old2, young))
    assert set(dp.services) == {grown.id, old2.id} and set(errors(ack)) == {young.id}


async def test_services_that_free_backend_entries_are_written_first() -> None:
    """A (older) gives up its 4 backends while B replaces its 2 with 5 new ones: fine once A
    has shrunk (2 + 5 <= 10), too many before (4 + 2 + 5 > 10), whatever the ids say."""
    a = aged("192.0.2.9", 100, backends=4)
    b = service("192.0.2.1", *(backend(HOST, port=8000 + i) for i in range(2)))
    b.created_unix_seconds = 200
    dp = FakeDataplane(caps=capacities(backends=10))
    agent = Agent([lb_role(Opener(dp))])
    assert not errors(await agent.handle(view(1, a, b)))
    a2 = aged("192.0.2.9", 100, backends=0)
    b2 = service("192.0.2.1", *(backend(HOST, port=9000 + i) for i in range(5)))
    b2.created_unix_seconds = 200
    dp.writes.clear()
    assert not errors(await agent.handle(view(2, a2, b2)))
    assert dp.writes == [a.id, b.id]
    assert len(dp.services[b.id][1]) == 5


async def test_a_vip_whose_table_cannot_be_made_current_is_withdrawn() -> None:
    web = service("192.0.2.10", backend(HOST))
    web_tls = service("192.0.2.10", backend(HOST, port=8443), port=443)  # same VIP
    other = service("192.0.2.11", backend(HOST))
    dp, bgp = FakeDataplane(), RecordingBGP()
    agent = Agent([lb_role(Opener(dp), bgp=bgp)], bgp=bgp)
    await agent.handle(view(1, web, web_tls, other))
    assert bgp.vips[-1] == {"192.0.2.10", "192.0.2.11"}
    # An update of one of the VIP's services fails: its old table is still in the maps
    # (stale, while the other nodes hold the new one), so the whole VIP is withdrawn.
    dp.broken.add(web_tls.id)
    web_tls2 = service("192.0.2.10", backend(HOST, port=8444), port=443)
    ack = await agent.handle(view(2, web, web_tls2, other))
    assert set(errors(ack)) == {web_tls.id}
    assert bgp.vips[-1] == {"192.0.2.11"}
    dp.broken.clear()
    assert not errors(await agent.handle(view(3, web, web_tls2, other)))
    assert bgp.vips[-1] == {"192.0.2.10", "192.0.2.11"}


async def test_removed_backends_are_taken_out_when_the_added_ones_do_not_fit() -> None:
    """The maps cannot take web's two new backends: web is written with the two it keeps (no
    new flow goes to the one removed), reported, and its VIP withdrawn until all of it is
    written; other VIPs stay announced."""
    web = service("192.0.2.10", *(backend(HOST, port=p) for p in (8000, 8001, 8002)))
    other = service("192.0.2.11", backend(HOST, port=7000))
    dp, bgp = FakeDataplane(caps=capacities(backends=10)), RecordingBGP()
    agent = Agent([lb_role(Opener(dp), bgp=bgp)], bgp=bgp)
    assert not errors(await agent.handle(view(1, web, other)))
    dp.taken = 5  # 4 programmed + 5: one entry free
    web2 = service("192.0.2.10", *(backend(HOST, port=p) for p in (8001, 8002, 8003, 8004)))
    ack = await agent.handle(view(2, web2, other))
    assert [b.port for b in dp.services[web.id][1]] == [8001, 8002]
    assert set(errors(ack)) == {web.id}
    assert "needs 2 new backend entries; written with the 2 of its backends" in errors(ack)[web.id]
    assert bgp.vips[-1] == {"192.0.2.11"}
    # Room again: the next version writes all of it, and the VIP is announced again.
    dp.taken = 0
    assert not errors(await agent.handle(view(3, web2, other)))
    assert [b.port for b in dp.services[web.id][1]] == [8001, 8002, 8003, 8004]
    assert bgp.vips[-1] == {"192.0.2.10", "192.0.2.11"}


async def test_a_service_whose_backends_are_all_replaced_keeps_none_of_the_old_ones() -> None:
    web = service("192.0.2.10", *(backend(HOST, port=8000 + i) for i in range(3)))
    dp, bgp = FakeDataplane(caps=capacities(backends=8)), RecordingBGP()
    agent = Agent([lb_role(Opener(dp), bgp=bgp)], bgp=bgp)
    await agent.handle(view(1, web))
    dp.taken = 3  # 3 + 3 used: the 3 new ones do not fit beside the old ones
    web2 = service("192.0.2.10", *(backend(HOST, port=9000 + i) for i in range(3)))
    ack = await agent.handle(view(2, web2))
    assert dp.services[web.id][1] == () and set(errors(ack)) == {web.id}
    assert bgp.vips[-1] == frozenset()
