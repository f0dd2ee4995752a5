"""The rendered RBAC covers exactly the API calls weir-controller makes: a real controller
process runs as its ServiceAccount against the fake, which enforces the rendered rules;
every request must be allowed, and every granted permission must have been used. As
deployed, the controller makes its CA (a Secret) and replaces a stale CA bundle
(ConfigMap); an agent trades its token for its node certificate (a TokenReview; the fake
is Kubernetes 1.29, whose tokens do not name the node, so the Pod is read) and reports a
BGP session (the leader writes the BGPPeer status); the leader refuses an advertisement's
localPref towards the eBGP peer (in the BGPAdvertisement's condition); a node is drained
(the controller patches the Node's annotation) and weirctl status reads the controller's
Deployment, both through the local socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from weir.common.pb import pb, pb_grpc
from weir.nodeagent.identity import TokenIdentity

from . import builders as b
from .conftest import NAMESPACE, render_deploy, serving
from .fakeapi import FakeKubeAPI
from .harness import accepted, events, ingress
from .procs import FAST_LEASE, Agent, ControllerProc
from .rbac import Grant, bindings_of, grants_for, service_account_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

ADMIN = "admin"
AUDIENCE = "weir-controller"  # the rendered --agent-token-audience


async def test_controller_rbac_is_exact(tmp_path: Path) -> None:
    async with serving(version=(1, 29)) as fake:
        await check_rbac(fake, tmp_path)


async def check_rbac(fake: FakeKubeAPI, tmp_path: Path) -> None:
    docs = await asyncio.to_thread(render_deploy)
    user = service_account_user(NAMESPACE, "weir-controller")
    grants = grants_for(docs, NAMESPACE, "weir-controller")
    fake.authorizer = lambda rec: rec.user == ADMIN or any(g.allows(rec) for g in grants)
    kubeconfig = fake.write_kubeconfig(tmp_path / "sa-kubeconfig", user=user)

    fake.create(b.pool("main", "192.0.2.0/31"))
    fake.create(b.node("node-a", "10.0.0.1"))
    fake.create(b.secret("bgp", NAMESPACE, password="pw"))
    fake.create(b.service_account("weir-agent", NAMESPACE))
    fake.create(b.pod("agent-node-a", NAMESPACE, "node-a", "weir-agent"))
    fake.create(b.deployment("weir-controller", NAMESPACE, replicas=2))
    # Same creation second: ordered by name, so "c-late" finds the pool exhausted (a Warning).
    for name in ("a-web", "b-api", "c-late"):
        fake.create(b.service(name))

    def replica(identity: str) -> ControllerProc:
        return ControllerProc(
            kubeconfig,
            tmp_path,
            identity,
            *FAST_LEASE,
            "--deployment",
            "weir-controller",
            "--local-socket",
            str(tmp_path / f"{identity}.sock"),
            tokens=AUDIENCE,
        )

    fake.create(b.peer("router", "10.0.0.254"))
    fake.create(b.advertisement("steer", localPref=200))
    ctl, second = replica("rbac"), replica("rbac-2")
    agent: Agent | None = None
    try:
        await ctl.start()
        await fake.wait_until(lambda: b"BEGIN CERTIFICATE" in ca_bundle(fake), within=30)
        # A second replica finds the bundle stale (as after the CA Secret was replaced): it
        # updates it.
        (published,) = fake.list("v1", "ConfigMap", NAMESPACE)
        fake.update({**published, "data": {"ca.crt": "a CA of before"}})
        await second.start()
        await fake.wait_until(lambda: b"BEGIN CERTIFICATE" in ca_bundle(fake), within=30)
        agent = token_agent(fake, ctl, tmp_path)
        agent.client.report_status(
            pb.NodeStatus(
                bgp_sessions=[
                    pb.BGPSessionStatus(peer="router", state="established", routes_sent=1)
                ]
            )
        )
        agent.start()
        await agent.until(lambda a: a.view is not None and a.view.bgp.local_asn != 0, within=30)
        async with grpc.aio.insecure_channel(f"unix://{tmp_path / 'rbac.sock'}") as ch:
            stub = pb_grpc.NodePlaneStub(ch)
            await stub.SetNodeDrain(pb.SetNodeDrainRequest(node="node-a", drain=True), timeout=10)
            status = await stub.GetControllerStatus(pb.GetControllerStatusRequest(), timeout=10)
        assert status.replicas.known and status.replicas.desired == 2, status
        await fake.wait_until(
            lambda: (
                ingress(fake, "a-web")
                and ingress(fake, "b-api")
                and events(fake, "c-late")
                and len(fake.calls(user=user, verb="update", resource="leases")) >= 1
                and peer_established(fake) == 1
                and accepted(fake, "steer").get("status") == "False"
            ),
            within=30,
        )
        await second.stop()
        await ctl.stop()  # SIGTERM: the Lease is released (one more update)
    except BaseException:
        print(ctl.logs())
        print(
            ingress(fake, "a-web"),
            ingress(fake, "b-api"),
            events(fake, "c-late"),
            sorted({(r.verb, r.resource, r.code) for r in fake.calls(user=user)}),
        )
        raise
    finally:
        if agent is not None:
            await agent.stop()
        await second.close()
        await ctl.close()
    calls = fake.calls(user=user)
    denied = sorted(
        {(r.verb, r.resource, r.subresource, r.namespace) for r in calls if r.code == 403}
    )
    assert not denied, f"the rendered RBAC refuses calls the controller makes: {denied}"
    used: set[Grant] = set()
    for rec in calls:
        used |= {g for g in grants if g.allows(rec)}
    unused = sorted(grants - used, key=str)
    assert not unused, f"the rendered RBAC grants what the controller never uses: {unused}"


def token_agent(fake: FakeKubeAPI, ctl: ControllerProc, tmp_path: Path) -> Agent:
    """The agent of node-a as deployed: its Pod's token and the published CA bundle."""
    bundle, token = tmp_path / "ca.crt", tmp_path / "token"
    bundle.write_bytes(ca_bundle(fake))
    token.write_text(
        fake.service_account_token(
            NAMESPACE, "weir-agent", pod="agent-node-a", audiences=(AUDIENCE,)
        )
    )
    identity = TokenIdentity(
        "node-a",
        token,
        bundle,
        f"127.0.0.1:{ctl.bootstrap_port}",
        server_name=f"weir-controller.{NAMESPACE}.svc",
        retry=(0.1, 0.5),
    )
    return Agent(ctl.target, "node-a", identity)


def ca_bundle(fake: FakeKubeAPI) -> bytes:
    configmap = fake.get("v1", "ConfigMap", NAMESPACE, "weir-ca-bundle") or {}
    return str((configmap.get("data") or {}).get("ca.crt", "")).encode()


def peer_established(fake: FakeKubeAPI) -> int:
    obj = fake.get(b.WEIR, "BGPPeer", "", "router") or {}
    return (obj.get("status") or {}).get("established", 0)


def test_agent_has_no_api_access() -> None:
    docs = render_deploy()
    assert bindings_of(docs, NAMESPACE, "weir-agent") == []
    (sa,) = [
        d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "weir-agent"
    ]
    assert sa.get("automountServiceAccountToken") is False
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "weir-agent"
    assert pod["automountServiceAccountToken"] is False
