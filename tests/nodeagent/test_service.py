"""The agent's service model, converted from the node-plane protobuf."""

from __future__ import annotations

from weir.common.pb import pb
from weir.nodeagent.service import Backend, Frontend, from_pb


def backend(addr: str, weight: int = 1, ready: bool = True) -> pb.Backend:
    return pb.Backend(address=addr, port=8080, weight=weight, ready=ready, serving=True)


def test_from_pb() -> None:
    svc = pb.Service(
        id="192.0.2.10:53/UDP",
        vip="192.0.2.10",
        port=53,
        protocol=pb.PROTOCOL_UDP,
        strategy=pb.STRATEGY_RANDOM,
        maglev_table_size=251,
        session_affinity=pb.SESSION_AFFINITY_CLIENT_IP,
        affinity_timeout_seconds=60,
        backends=[backend("10.0.0.2", weight=0), backend("10.0.0.1", weight=3)],
    )
    got = from_pb(svc)
    want = Frontend("192.0.2.10:53/UDP", "192.0.2.10", 53, 17, "random", "client_ip")
    assert got.frontend == want
    assert got.frontend.client_ip and got.id == svc.id
    assert (got.table_size, got.affinity_timeout) == (251, 60)
    # sorted, and an unset weight is 1
    assert got.backends == (Backend("10.0.0.1", 8080, 3), Backend("10.0.0.2", 8080, 1))
    assert got.weights == (3, 1)
    plain = from_pb(pb.Service(id="x", vip="192.0.2.10", port=80, protocol=pb.PROTOCOL_TCP))
    assert (plain.frontend.strategy, plain.frontend.affinity) == ("maglev", "none")


def test_equal_weights_are_the_unweighted_table() -> None:
    svc = pb.Service(id="x", backends=[backend("10.0.0.1", weight=5), backend("10.0.0.2", 5)])
    assert from_pb(svc).weights is None


def test_backends_are_the_ones_the_controller_chose() -> None:
    # The controller already applied KEP-1669 (a serving-terminating fallback arrives with
    # ready=False): the agent programs what it was sent.
    svc = pb.Service(id="x", backends=[backend("10.0.0.2", ready=False), backend("10.0.0.1")])
    assert from_pb(svc).backends == (Backend("10.0.0.1", 8080), Backend("10.0.0.2", 8080))


def test_each_backend_says_how_it_is_reached() -> None:
    pod = pb.Backend(
        address="10.244.1.7",
        port=8080,
        forwarding=pb.FORWARDING_ENCAP,
        node="worker-1",
        node_address="10.1.0.5",
    )
    host = pb.Backend(address="10.0.0.1", port=80, forwarding=pb.FORWARDING_L2_DSR)
    older = pb.Backend(address="10.0.0.2", port=80, node_address="10.1.0.6")  # unspecified
    got = from_pb(pb.Service(id="x", backends=[pod, host, older])).backends
    assert got == (
        Backend("10.0.0.1", 80),
        Backend("10.0.0.2", 80),
        Backend("10.244.1.7", 8080, forwarding="encap", node="10.1.0.5"),
    )
    assert str(got[2]) == "10.244.1.7:8080 via node 10.1.0.5"
