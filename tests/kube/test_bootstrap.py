"""Node identity without hand-placed files, end to end: a real weir-controller against the fake
API server makes its own CA (a Secret) and serving certificate, publishes the CA in a
ConfigMap, and trades agents' projected ServiceAccount tokens for node certificates
(TokenReview, bound to the Pod's node). Agents hold nothing but their token and that bundle.

- an agent with only its token gets its identity and its own view; on SIGTERM the controller
  exits at once;
- a token of a Pod on another node gets no certificate for this node, so no view of it;
- expired, wrong-audience, forged tokens and tokens of other ServiceAccounts are refused;
- before 1.30 (no node in the token) the node comes from the Pod object;
- certificates are renewed before they end, each agent at its own moment: every stream moves
  to the new certificate without failing and without a full resend (no reconnect storm).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from weir.common.pb import pb, pb_grpc
from weir.nodeagent.identity import TokenIdentity

from . import builders as b
from .conftest import NAMESPACE, serving
from .fakeapi import FakeKubeAPI
from .procs import Agent, ControllerProc

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

AUDIENCE = "weir-controller"
SERVER_NAME = f"weir-controller.{NAMESPACE}.svc"
NODES = ("node-a", "node-b")
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Cluster:
    fake: FakeKubeAPI
    ctl: ControllerProc
    bundle: Path  # the CA bundle, as the ConfigMap volume gives it to agents
    tmp: Path

    def token(self, pod: str, **kw: object) -> Path:
        """A projected token file of the agent Pod (the kubelet's)."""
        kw.setdefault("audiences", (AUDIENCE,))
        path = self.tmp / f"{pod}-{time.monotonic_ns()}.token"
        path.write_text(self.fake.service_account_token(NAMESPACE, "weir-agent", pod=pod, **kw))
        return path

    def identity(self, node: str, token: Path) -> TokenIdentity:
        return TokenIdentity(
            node,
            token,
            self.bundle,
            f"127.0.0.1:{self.ctl.bootstrap_port}",
            server_name=SERVER_NAME,
            retry=(0.1, 0.5),
        )

    def bootstrap_channel(self) -> grpc.aio.Channel:
        """To the bootstrap port: TLS trusting the bundle, no client certificate."""
        creds = grpc.ssl_channel_credentials(self.bundle.read_bytes())
        options = [("grpc.ssl_target_name_override", SERVER_NAME)]
        return grpc.aio.secure_channel(f"127.0.0.1:{self.ctl.bootstrap_port}", creds, options)

    async def serving(self) -> None:
        """Until the controller published its first version (its health says SERVING)."""
        request = health_pb2.HealthCheckRequest()
        async with self.bootstrap_channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            call = stub.Watch(request, wait_for_ready=True)
            try:
                async with asyncio.timeout(30):
                    async for answer in call:
                        if answer.status == SERVING:
                            return
            finally:
                # Closing the channel leaves the stream open at the controller, whose stop
                # would then wait out its whole grace period (5 s) at every teardown.
                call.cancel()

    async def issue(self, node: str, token: str) -> pb.IssueNodeCertificateResponse:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .sign(key, hashes.SHA256())
        )
        async with self.bootstrap_channel() as channel:
            request = pb.IssueNodeCertificateRequest(
                node=node, csr=csr.public_bytes(serialization.Encoding.PEM), token=token
            )
            return await pb_grpc.NodePlaneStub(channel).IssueNodeCertificate(request, timeout=10)


@contextlib.asynccontextmanager
async def start(fake: FakeKubeAPI, tmp: Path, *flags: str) -> AsyncIterator[Cluster]:
    for i, node in enumerate(NODES):
        fake.create(b.node(node, f"10.0.0.{i + 1}", b.LB_NODE))
        fake.create(b.pod(f"agent-{node}", NAMESPACE, node, "weir-agent"))
    fake.create(b.service_account("weir-agent", NAMESPACE))
    fake.create(b.service_account("intruder", NAMESPACE))
    ctl = ControllerProc(
        fake.write_kubeconfig(tmp / "kubeconfig"), tmp, "ctl", *flags, tokens=AUDIENCE
    )
    await ctl.start()
    try:
        await fake.wait_until(
            lambda: fake.get("v1", "ConfigMap", NAMESPACE, "weir-ca-bundle") is not None, 30
        )
        bundle = tmp / "ca.crt"
        configmap = fake.get("v1", "ConfigMap", NAMESPACE, "weir-ca-bundle") or {}
        bundle.write_text(configmap["data"]["ca.crt"])
        cluster = Cluster(fake, ctl, bundle, tmp)
        await cluster.serving()
        yield cluster
    except BaseException:
        print(ctl.logs())
        raise
    finally:
        await ctl.stop()
        await ctl.close()


@pytest.fixture
async def cluster(fake: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with start(fake, tmp_path) as c:
        yield c


async def test_an_agent_with_only_its_token_gets_its_own_view(cluster: Cluster) -> None:
    secret = cluster.fake.get("v1", "Secret", NAMESPACE, "weir-controller-ca")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    agent = Agent(
        cluster.ctl.target, "node-a", cluster.identity("node-a", cluster.token("agent-node-a"))
    )
    agent.start()
    try:
        await agent.until(lambda a: a.view is not None, within=30)
        assert agent.view is not None and agent.view.node == "node-a"
        assert agent.view.node_config.load_balancer and agent.view.node_config.address == "10.0.0.1"
    finally:
        await agent.stop()
    # SIGTERM: the controller (TLS used) exits at once, not 2 s later in gRPC's OpenSSL exit
    # handler (controller/main.py, release_grpc_aio).
    began = time.monotonic()
    await cluster.ctl.stop()
    took = time.monotonic() - began
    assert cluster.ctl.proc is not None and cluster.ctl.proc.returncode == 0, cluster.ctl.logs()
    assert took < 1.5, f"{took:.1f} s to exit"


async def test_a_token_of_a_pod_on_another_node_gets_nothing(cluster: Cluster) -> None:
    token_of_b = cluster.token("agent-node-b").read_text()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cluster.issue("node-a", token_of_b)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node-b" in err.value.details() and "node-a" in err.value.details()
    # The client library: node-b's token never yields node-a's view, while node-b's own
    # agent gets node-b's.
    impostor = Agent(
        cluster.ctl.target, "node-a", cluster.identity("node-a", cluster.token("agent-node-b"))
    )
    honest = Agent(
        cluster.ctl.target, "node-b", cluster.identity("node-b", cluster.token("agent-node-b"))
    )
    for a in (impostor, honest):
        a.start()
    try:
        await honest.until(lambda a: a.view is not None, within=30)
        await asyncio.sleep(1)  # the impostor retried meanwhile (backoff 0.1 to 0.5 s)
        assert impostor.view is None and impostor.client.accepted == 0
    finally:
        for a in (impostor, honest):
            await a.stop()


async def test_bad_tokens_are_refused(cluster: Cluster) -> None:
    fake = cluster.fake
    cases = {
        "expired": cluster.token("agent-node-a", issued_at=time.time() - 3600 - 120).read_text(),
        "audience": cluster.token("agent-node-a", audiences=("someone-else",)).read_text(),
        "api audience": cluster.token("agent-node-a", audiences=()).read_text(),
        "forged": cluster.token("agent-node-a").read_text()[:-4] + "AAAA",
        "unbound": fake.service_account_token(NAMESPACE, "weir-agent", audiences=(AUDIENCE,)),
        "other account": fake.service_account_token(NAMESPACE, "intruder", audiences=(AUDIENCE,)),
    }
    codes = {}
    for case, token in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cluster.issue("node-a", token)
        codes[case] = err.value.code()
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert codes == {
        "expired": unauthenticated,
        "audience": unauthenticated,
        "api audience": unauthenticated,
        "forged": unauthenticated,
        "unbound": grpc.StatusCode.PERMISSION_DENIED,
        "other account": grpc.StatusCode.PERMISSION_DENIED,
    }
    # A good token, for the record: the certificate names the node and is short-lived.
    answer = await cluster.issue("node-a", cluster.token("agent-node-a").read_text())
    cert = x509.load_pem_x509_certificate(answer.certificate)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node-a"]
    assert 0 < answer.not_after_unix - time.time() <= 12 * 3600 + 60
    # The bootstrap port serves nothing else to callers without a certificate.
    async with cluster.bootstrap_channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.NodePlaneStub(channel).ListAgents(pb.ListAgentsRequest(), timeout=5)
    assert err.value.code() == unauthenticated


async def test_before_1_30_the_node_comes_from_the_pod(tmp_path: Path) -> None:
    async with serving(version=(1, 29)) as fake:
        async with start(fake, tmp_path) as cluster:
            answer = await cluster.issue("node-b", cluster.token("agent-node-b").read_text())
            assert answer.certificate
            assert fake.calls(verb="get", resource="pods", name="agent-node-b")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cluster.issue("node-a", cluster.token("agent-node-b").read_text())
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


LIFE = 4.0  # seconds a node certificate lasts in the rotation test
AGENTS = 8


async def test_rotation_moves_each_stream_on_its_own_without_a_storm(
    fake: FakeKubeAPI, tmp_path: Path
) -> None:
    for i in range(AGENTS):
        fake.create(b.node(f"node-{i}", f"10.0.1.{i + 1}", b.LB_NODE))
        fake.create(b.pod(f"agent-{i}", NAMESPACE, f"node-{i}", "weir-agent"))
    async with start(fake, tmp_path, "--agent-cert-validity", str(LIFE)) as cluster:
        await rotate(cluster)


async def rotate(cluster: Cluster) -> None:
    identities = [cluster.identity(f"node-{i}", cluster.token(f"agent-{i}")) for i in range(AGENTS)]
    agents = [Agent(cluster.ctl.target, f"node-{i}", identities[i]) for i in range(AGENTS)]
    renewed: list[list[float]] = [[] for _ in agents]
    enough = asyncio.Event()

    async def watch(identity: TokenIdentity, times: list[float]) -> None:
        seen = 1
        while True:
            seen = await identity.generation.wait_past(seen)
            times.append(time.monotonic())
            if all(len(r) >= 3 for r in renewed):
                enough.set()

    watchers = [asyncio.create_task(watch(n, r)) for n, r in zip(identities, renewed, strict=True)]
    for a in agents:
        a.start()
    try:
        # Three renewals each: about two certificate lives.
        async with asyncio.timeout(30):
            await enough.wait()
            for a, identity in zip(agents, identities, strict=True):
                # Every renewal moved the stream (one more accepted stream each), and
                # nothing else ended one: no failure, no cut at expiry.
                await a.client.wait_for(
                    lambda a=a, n=identity: a.client.accepted == n.generation.value
                )
    finally:
        for w in watchers:
            w.cancel()
        for a in agents:
            await a.stop()
    for a in agents:
        assert a.client.failures == 0
        # Each new stream resumed where the agent was: one full snapshot, at the start.
        assert [u.full for u in a.updates].count(True) == 1, a.updates
    # The first renewals were spread over their window (half to four fifths of a life),
    # not all at once.
    first = sorted(r[0] for r in renewed)
    assert first[-1] - first[0] >= 0.25 * 0.3 * LIFE, first
