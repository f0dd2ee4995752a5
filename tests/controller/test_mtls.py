"""mTLS: the client certificate must name the node the agent asks for; only operators drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from weir.common.pb import pb, pb_grpc
from weir.controller.plane.server import ServerTLS
from weir.ctl.main import main as weirctl_main
from weir.nodeagent.controller_client import TLSConfig

from tests.controller.plane_support import Cert, Plane, Recorder, ThrowawayCA, cluster, service

pytestmark = pytest.mark.timeout(60)

LB = ["lb-1", "lb-2", "lb-3"]  # the agents' nodes: load-balancer nodes

S1 = service("192.0.2.1", 80, [("10.0.0.1", 8080)])


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path)


@pytest.fixture
def server_tls(ca: ThrowawayCA) -> ServerTLS:
    cert = ca.issue("weir-controller", dns=["weir-controller", "localhost"], ips=["127.0.0.1"])
    return ServerTLS(cert=cert.cert, key=cert.key, client_ca=ca.ca)


def client_tls(ca: ThrowawayCA, cert: Cert) -> TLSConfig:
    return TLSConfig(ca=ca.ca, cert=cert.cert, key=cert.key, server_name="weir-controller")


def channel(target: str, ca: ThrowawayCA, cert: Cert | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        ca.ca.read_bytes(),
        cert.key.read_bytes() if cert else None,
        cert.cert.read_bytes() if cert else None,
    )
    options = [("grpc.ssl_target_name_override", "weir-controller")]
    return grpc.aio.secure_channel(target, creds, options)


async def refused(
    target: str, ca: ThrowawayCA, cert: Cert | None, node: str
) -> grpc.aio.AioRpcError:
    async with channel(target, ca, cert) as ch:
        call = pb_grpc.NodePlaneStub(ch).Connect()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(10):
                await call.write(pb.AgentMessage(hello=pb.Hello(node=node)))
                await call.read()
        return err.value


async def test_the_right_node_is_accepted(ca: ThrowawayCA, server_tls: ServerTLS) -> None:
    async with Plane(tls=server_tls) as p:
        v = p.store.publish(cluster([S1], lb=LB))
        san = ca.issue("lb-1", dns=["lb-1"])
        cn_only = ca.issue("lb-2")  # no SAN: the common name identifies the node
        rec = Recorder()
        agents = [
            p.agent("lb-1", rec, tls=client_tls(ca, san)),
            p.agent("lb-2", tls=client_tls(ca, cn_only)),
        ]
        async with asyncio.timeout(10):
            for agent in agents:
                await agent.wait_version(v)
        assert rec.kinds() == [(v, 0, True)]


async def test_a_certificate_for_another_node_is_refused(
    ca: ThrowawayCA, server_tls: ServerTLS
) -> None:
    async with Plane(tls=server_tls) as p:
        p.store.publish(cluster([S1], lb=LB))
        other = ca.issue("lb-2", dns=["lb-2"])
        err = await refused(p.target, ca, other, node="lb-1")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "lb-1" in err.details()
        # A certificate whose CN names the node but whose DNS SAN does not: SAN wins.
        mixed = ca.issue("lb-1", dns=["lb-9"])
        err = await refused(p.target, ca, mixed, node="lb-1")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "lb-1" not in {a.node for a in p.plane.list_agents().agents}


async def test_the_client_library_never_gets_state_for_another_node(
    ca: ThrowawayCA, server_tls: ServerTLS
) -> None:
    async with Plane(tls=server_tls) as p:
        v = p.store.publish(cluster([S1], lb=LB))
        rec = Recorder()
        impostor = p.agent("lb-1", rec, tls=client_tls(ca, ca.issue("lb-2", dns=["lb-2"])))
        honest = p.agent("lb-3", tls=client_tls(ca, ca.issue("lb-3", dns=["lb-3"])))
        registry = p.plane.metrics.registry

        def refusals() -> float:
            labels = {"reason": "identity"}
            return registry.get_sample_value("weir_agents_refused_total", labels) or 0

        async with asyncio.timeout(10):
            await honest.wait_version(v)
            # Refused, it retries with backoff, and is refused again.
            await p.plane.wait_for(lambda: refusals() >= 2)
        assert rec.updates == [] and not impostor.connected
        assert [a.node for a in p.plane.list_agents().agents] == ["lb-3"]


async def test_no_client_certificate_no_connection(ca: ThrowawayCA, server_tls: ServerTLS) -> None:
    async with Plane(tls=server_tls) as p:
        p.store.publish(cluster([S1], lb=LB))
        err = await refused(p.target, ca, None, node="lb-1")
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext against a TLS port does not get through either.
        async with grpc.aio.insecure_channel(p.target) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.NodePlaneStub(ch).ListAgents(pb.ListAgentsRequest(), timeout=5)


async def test_weirctl_over_mtls(ca: ThrowawayCA, server_tls: ServerTLS, capsys) -> None:
    async with Plane(tls=server_tls) as p:
        p.store.publish(cluster([S1], lb=LB))
        operator = ca.issue("weirctl-operator")
        tls = ["--ca", str(ca.ca), "--server-name", "weir-controller"]
        creds = ["--cert", str(operator.cert), "--key", str(operator.key)]
        argv = ["--controller", p.target, "snapshot", "-o", "json", *tls]
        # weirctl is synchronous: run it off the loop that serves the controller.
        assert await asyncio.to_thread(weirctl_main, [*argv, *creds]) == 0
        assert '"192.0.2.1:80/TCP"' in capsys.readouterr().out
        assert await asyncio.to_thread(weirctl_main, argv) == 1  # no client certificate
        assert "UNAVAILABLE" in capsys.readouterr().err


class RecordingDrainer:
    """Records the drain settings that got through authorization."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def set(self, node: str, drain: bool) -> None:
        self.calls.append((node, drain))


async def test_only_operators_may_drain(ca: ThrowawayCA, server_tls: ServerTLS) -> None:
    drainer = RecordingDrainer()
    async with Plane(tls=server_tls, drainer=drainer, operators=["weirctl-admin"]) as p:
        p.store.publish(cluster([S1], lb=LB))
        drain = pb.SetNodeDrainRequest(node="lb-2", drain=True)
        # A node's own certificate is CA-signed, but a node must not drain the others.
        async with channel(p.target, ca, ca.issue("lb-1", dns=["lb-1"])) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.NodePlaneStub(ch).SetNodeDrain(drain, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'lb-1'" in err.value.details() and "--operator" in err.value.details()
        # The CN does not count when a DNS SAN is present (same identity as Connect).
        mixed = ca.issue("weirctl-admin", dns=["lb-3"])
        async with channel(p.target, ca, mixed) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.NodePlaneStub(ch).SetNodeDrain(drain, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert drainer.calls == []
        # The operator's certificate (CN only), through weirctl.
        admin = ca.issue("weirctl-admin")
        argv = ["--controller", p.target, "node", "drain", "lb-2", "--timeout", "0"]
        tls = ["--ca", str(ca.ca), "--server-name", "weir-controller"]
        creds = ["--cert", str(admin.cert), "--key", str(admin.key)]
        assert await asyncio.to_thread(weirctl_main, [*argv, *tls, *creds]) == 0
        assert drainer.calls == [("lb-2", True)]


async def test_non_operators_may_still_inspect(ca: ThrowawayCA, server_tls: ServerTLS) -> None:
    async with Plane(tls=server_tls, drainer=RecordingDrainer(), operators=["weirctl-admin"]) as p:
        v = p.store.publish(cluster([S1], lb=LB))
        agent = p.agent("lb-1", tls=client_tls(ca, ca.issue("lb-1", dns=["lb-1"])))
        async with asyncio.timeout(10):
            await agent.wait_version(v)
        async with channel(p.target, ca, ca.issue("viewer", dns=["viewer"])) as ch:
            stub = pb_grpc.NodePlaneStub(ch)
            snap = await stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=10)
            agents = await stub.ListAgents(pb.ListAgentsRequest(), timeout=10)
            # Not the flow log: its decisions carry client addresses.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.WatchFlows(pb.WatchFlowsRequest(node="lb-1"), timeout=10):
                    pass
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert [s.id for s in snap.services] == [S1.id]
        assert [a.node for a in agents.agents] == ["lb-1"]
        async with channel(p.target, ca, ca.issue("weirctl-admin")) as ch:
            request = pb.WatchFlowsRequest(node="lb-1")
            (answer,) = [r async for r in pb_grpc.NodePlaneStub(ch).WatchFlows(request)]
        assert "sampling is off" in answer.notice  # this agent relays no flow log


async def test_plaintext_has_no_identity_and_may_drain() -> None:
    drainer = RecordingDrainer()
    async with Plane(drainer=drainer, operators=["weirctl-admin"]) as p:
        p.store.publish(cluster([S1], lb=LB))
        async with p.channel() as ch:
            drain = pb.SetNodeDrainRequest(node="lb-2", drain=True)
            await pb_grpc.NodePlaneStub(ch).SetNodeDrain(drain, timeout=10)
        assert drainer.calls == [("lb-2", True)]
