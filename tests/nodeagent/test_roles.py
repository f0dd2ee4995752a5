"""The agent's two roles, each driven by the view: when they open their data plane, what
they do when the view stops giving them work, and how they report what they cannot do.

No kernel here: the data planes, the uplink and the neighbour table are stand-ins that
record what they are asked (the real ones: test_agent.py, test_pod_path.py,
tests/dataplane/)."""

from __future__ import annotations

import pytest
from weir.common.pb import pb
from weir.nodeagent.agent import Agent
from weir.nodeagent.backend_role import BackendRole
from weir.nodeagent.dataplane import BackendTarget
from weir.nodeagent.dataplane.nat import LocalBackend, NatSettings
from weir.nodeagent.service import Frontend

from tests.nodeagent.standins import (
    LB_NODES,
    MACS,
    OWN_MAC,
    ROUTER,
    SELF,
    WEB,
    FakeDataplane,
    FakeNat,
    FakeUplink,
    Opener,
    RecordingBGP,
    RecordingMetrics,
    backend,
    endpoint,
    errors,
    lb_role,
    service,
    view,
)

# -- the load-balancer role ------------------------------------------------------------------


async def test_a_node_never_given_the_role_never_opens_xdp() -> None:
    opener, bgp = Opener(FakeDataplane()), RecordingBGP()
    role = lb_role(opener, bgp=bgp)
    agent = Agent([role], bgp=bgp)
    for version in (1, 2):
        ack = await agent.handle(view(version, lb=False))
        assert not errors(ack)
    assert opener.calls == 0 and bgp.vips == []  # ExaBGP never started either
    status = await agent.status()
    assert status.dataplane_healthy and not status.maps


async def test_opened_at_the_first_version_with_the_role_and_kept_after_losing_it() -> None:
    dp = FakeDataplane()
    opener, bgp = Opener(dp), RecordingBGP()
    role = lb_role(opener, bgp=bgp)
    agent = Agent([role], bgp=bgp)
    await agent.handle(view(1, lb=False))
    assert opener.calls == 0
    await agent.handle(view(2, WEB))
    assert opener.calls == 1 and list(dp.services) == [WEB.id]
    assert bgp.vips[-1] == {"192.0.2.10"}
    assert [m.name for m in (await agent.status()).maps] == ["services"]

    # Lost: nothing programmed, nothing announced, XDP kept (even were services still sent).
    ack = await agent.handle(view(3, WEB, lb=False))
    assert not errors(ack) and dp.services == {} and bgp.vips[-1] == frozenset()
    assert not dp.closed and role.dataplane is dp
    # Back: no second open.
    await agent.handle(view(4, WEB))
    assert opener.calls == 1 and list(dp.services) == [WEB.id]
    await agent.shutdown()
    assert dp.closed


async def test_an_earlier_agents_pins_are_taken_over_and_emptied_without_the_role() -> None:
    fe = Frontend("192.0.2.9:80/TCP", "192.0.2.9", 80, 6)
    dp = FakeDataplane(services={fe.id: (fe, (BackendTarget("10.88.0.21", 80, b"\x02" * 6),))})
    opener = Opener(dp)
    agent = Agent([lb_role(opener, pinned=True)])
    await agent.handle(view(1, lb=False))
    assert opener.calls == 1 and dp.services == {}


async def test_a_data_plane_that_cannot_open_fails_every_service_until_it_opens() -> None:
    dp = FakeDataplane()
    opener = Opener(dp, fail=1)
    agent = Agent([lb_role(opener)])
    other = service("192.0.2.11", backend("10.88.0.21"))
    ack = await agent.handle(view(1, WEB, other))
    assert set(errors(ack)) == {WEB.id, other.id}
    assert "cannot open the load-balancer data plane: bcc is missing" in errors(ack)[WEB.id]
    status = await agent.status()
    assert not status.dataplane_healthy and len(status.service_errors) == 2
    ack = await agent.handle(view(2, WEB, other))
    assert not errors(ack) and set(dp.services) == {WEB.id, other.id}
    assert (await agent.status()).dataplane_healthy


async def test_encapsulated_backends_go_to_the_next_hop_toward_their_node() -> None:
    dp = FakeDataplane()
    pods = service(
        "192.0.2.10",
        backend("10.244.1.10", "10.77.1.1"),
        backend("10.244.2.10", "10.77.2.1"),
        backend("10.244.3.10", SELF),  # on this very node
        backend("10.88.0.21", port=80),  # L2 DSR beside them
    )
    agent = Agent([lb_role(Opener(dp))])
    ack = await agent.handle(view(1, pods))
    assert not errors(ack)
    assert dp.encap == (SELF, 6093, 1500)
    _, targets = dp.services[pods.id]
    assert sorted((t.address, t.node, t.mac) for t in targets) == [
        ("10.244.1.10", "10.77.1.1", MACS[ROUTER]),
        ("10.244.2.10", "10.77.2.1", MACS[ROUTER]),
        ("10.244.3.10", SELF, OWN_MAC),  # up its own stack: the node's own MAC
        ("10.88.0.21", "", MACS["10.88.0.21"]),
    ]


async def test_unreachable_nodes_leave_their_backends_out() -> None:
    dp = FakeDataplane()
    pods = service(
        "192.0.2.10",
        backend("10.244.1.10", "10.77.1.1"),
        backend("10.244.9.10", "10.77.9.1"),  # no route to that node
        pb.Backend(address="10.244.8.10", port=8080, forwarding=pb.FORWARDING_ENCAP),  # no node
    )
    agent = Agent([lb_role(Opener(dp))])
    ack = await agent.handle(view(1, pods))
    message = errors(ack)[pods.id]
    assert "applied without 2 backend(s)" in message
    assert "backend 10.244.9.10:8080 via node 10.77.9.1: no route to 10.77.9.1" in message
    assert "backend 10.244.8.10:8080 via node (none): its node has no address" in message
    assert [t.address for t in dp.services[pods.id][1]] == ["10.244.1.10"]


async def test_without_its_address_on_the_uplink_the_node_cannot_encapsulate() -> None:
    dp = FakeDataplane()
    mixed = service("192.0.2.10", backend("10.244.1.10", "10.77.1.1"), backend("10.88.0.21"))
    agent = Agent([lb_role(Opener(dp))])
    ack = await agent.handle(view(1, mixed, address="10.99.0.1"))
    message = errors(ack)[mixed.id]
    assert "this node's address 10.99.0.1 is not on eth0 (10.88.0.11/24)" in message
    assert dp.encap is None
    assert [t.address for t in dp.services[mixed.id][1]] == ["10.88.0.21"]  # L2 DSR still
    # The address fixed, the same service is written again, with its pod.
    ack = await agent.handle(view(2, mixed))
    assert not errors(ack) and dp.encap == (SELF, 6093, 1500)
    assert [t.address for t in dp.services[mixed.id][1]] == ["10.244.1.10", "10.88.0.21"]


# -- the backend role ------------------------------------------------------------------------


async def test_the_backend_role_opens_on_its_first_endpoint_and_keeps_its_flows() -> None:
    nat = FakeNat()
    opener = Opener(nat)
    role = BackendRole(opener, FakeUplink())
    agent = Agent([role])
    await agent.handle(view(1, lb=False, lb_node_addresses=LB_NODES))
    assert opener.calls == 0
    ep = endpoint("192.0.2.10", "10.244.1.7")
    ack = await agent.handle(view(2, lb=False, local_endpoints=[ep], lb_node_addresses=LB_NODES))
    assert not errors(ack) and opener.calls == 1
    assert nat.settings == NatSettings(SELF, 6093, 1500)
    assert nat.lb_nodes == set(LB_NODES)
    assert nat.backends == {LocalBackend("192.0.2.10", 80, 6, "10.244.1.7", 8080)}
    assert [m.name for m in (await agent.status()).maps] == ["local_backends"]
    # The endpoint leaves: its translation goes, the node stays configured for the flows
    # still being translated back.
    await agent.handle(view(3, lb=False, lb_node_addresses=LB_NODES))
    assert nat.backends == set() and nat.settings is not None and not nat.closed
    assert opener.calls == 1


async def test_an_earlier_agents_translations_are_taken_over_and_reconciled() -> None:
    nat = FakeNat(backends={LocalBackend("192.0.2.9", 80, 6, "10.244.1.5", 8080)})
    opener = Opener(nat)
    agent = Agent([BackendRole(opener, FakeUplink(), pinned=True)])
    await agent.handle(view(1, lb=False, lb_node_addresses=LB_NODES))
    assert opener.calls == 1 and nat.backends == set() and nat.lb_nodes == set(LB_NODES)


async def test_endpoints_that_cannot_be_programmed_are_errors_of_their_services() -> None:
    nat = FakeNat()  # room for 3 translations
    eps = [
        endpoint("192.0.2.10", "10.244.1.7"),
        endpoint("192.0.2.10", "10.244.1.8"),
        endpoint("192.0.2.11", "fd00::7"),  # IPv6: not yet
        endpoint("192.0.2.12", "10.244.1.7", proto=pb.PROTOCOL_SCTP),
        endpoint("192.0.2.13", "10.244.1.7"),
        endpoint("192.0.2.14", "10.244.1.7"),  # one too many
    ]
    agent = Agent([BackendRole(Opener(nat), FakeUplink())])
    ack = await agent.handle(view(1, lb=False, local_endpoints=eps))
    got = errors(ack)
    assert set(got) == {"192.0.2.11:80/TCP", "192.0.2.12:80/SCTP", "192.0.2.14:80/TCP"}
    assert "local endpoint fd00::7:8080" in got["192.0.2.11:80/TCP"]
    assert "is not TCP or UDP" in got["192.0.2.12:80/SCTP"]
    assert "the translation table is full (3 entries" in got["192.0.2.14:80/TCP"]
    assert {b.vip for b in nat.backends} == {"192.0.2.10", "192.0.2.13"}


async def test_the_backend_role_needs_the_node_address_on_the_uplink() -> None:
    nat = FakeNat()
    agent = Agent([BackendRole(Opener(nat), FakeUplink())])
    eps = [endpoint("192.0.2.10", "10.244.1.7"), endpoint("192.0.2.11", "10.244.1.7")]
    ack = await agent.handle(view(1, lb=False, local_endpoints=eps, address="10.99.0.1"))
    assert set(errors(ack)) == {"192.0.2.10:80/TCP", "192.0.2.11:80/TCP"}
    assert "10.99.0.1 is not on eth0" in errors(ack)["192.0.2.10:80/TCP"]
    assert nat.settings is None and len(nat.backends) == 2  # the view's, not stale ones
    ack = await agent.handle(view(2, lb=False, local_endpoints=eps))
    assert not errors(ack) and nat.settings == NatSettings(SELF, 6093, 1500)


# -- both ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fail", ["lb", "backend"])
async def test_one_node_with_both_roles_reports_each_roles_errors(fail: str) -> None:
    dp, nat, metrics = FakeDataplane(), FakeNat(), RecordingMetrics()
    lb = lb_role(Opener(dp, fail=int(fail == "lb")))
    backend_role = BackendRole(Opener(nat, fail=int(fail == "backend")), FakeUplink())
    agent = Agent([lb, backend_role], metrics=metrics)
    ep = endpoint("192.0.2.10", "10.244.1.7")
    ack = await agent.handle(view(1, WEB, local_endpoints=[ep], lb_node_addresses=LB_NODES))
    (message,) = errors(ack).values()
    assert f"cannot open the {'load-balancer' if fail == 'lb' else 'backend-role'}" in message
    ack = await agent.handle(view(2, WEB, local_endpoints=[ep], lb_node_addresses=LB_NODES))
    assert not errors(ack)
    assert list(dp.services) == [WEB.id] and len(nat.backends) == 1
    assert metrics.roles[-1] == {"load_balancer": True, "backend": True}
    await agent.handle(view(3, lb=False, lb_node_addresses=LB_NODES))
    assert metrics.roles[-1] == {"load_balancer": False, "backend": False}
