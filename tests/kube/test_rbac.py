"""The rendered RBAC covers exactly the API calls weir-controller makes: a real controller
process runs as its ServiceAccount against the fake, which enforces the rendered rules;
every request must be allowed, and every granted permission must have been used. An agent
reports a BGP session (the leader writes the BGPPeer status) and a node is drained (the
controller patches the Node's annotation)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from weir.common.pb import pb, pb_grpc

from . import builders as b
from .conftest import NAMESPACE, render_deploy
from .fakeapi import FakeKubeAPI
from .harness import events, ingress
from .procs import Agent, ControllerProc
from .rbac import Grant, bindings_of, grants_for, service_account_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

ADMIN = "admin"


async def test_controller_rbac_is_exact(fake: FakeKubeAPI, tmp_path: Path) -> None:
    docs = await asyncio.to_thread(render_deploy)
    user = service_account_user(NAMESPACE, "weir-controller")
    grants = grants_for(docs, NAMESPACE, "weir-controller")
    fake.authorizer = lambda rec: rec.user == ADMIN or any(g.allows(rec) for g in grants)
    kubeconfig = fake.write_kubeconfig(tmp_path / "sa-kubeconfig", user=user)

    fake.create(b.pool("main", "192.0.2.0/31"))
    fake.create(b.node("node-a", "10.0.0.1"))
    fake.create(b.secret("bgp", NAMESPACE, password="pw"))
    # Same creation second: ordered by name, so "c-late" finds the pool exhausted (a Warning).
    for name in ("a-web", "b-api", "c-late"):
        fake.create(b.service(name))
    ctl = ControllerProc(
        kubeconfig,
        tmp_path,
        "rbac",
        "--leader-elect",
        "--lease-duration",
        "4",
        "--renew-deadline",
        "3",
        "--retry-period",
        "0.5",
    )
    fake.create(b.peer("router", "10.0.0.254"))
    await ctl.start()
    agent = Agent(ctl.target, "node-a")
    agent.client.report_status(
        pb.NodeStatus(
            bgp_sessions=[pb.BGPSessionStatus(peer="router", state="established", routes_sent=1)]
        )
    )
    agent.start()
    try:
        await agent.until(lambda a: a.view is not None and a.view.bgp.local_asn != 0, within=30)
        async with grpc.aio.insecure_channel(ctl.target) as ch:
            await pb_grpc.NodePlaneStub(ch).SetNodeDrain(
                pb.SetNodeDrainRequest(node="node-a", drain=True), timeout=10
            )
        await fake.wait_until(
            lambda: (
                ingress(fake, "a-web")
                and ingress(fake, "b-api")
                and events(fake, "c-late")
                and len(fake.calls(user=user, verb="update", resource="leases")) >= 1
                and peer_established(fake) == 1
            ),
            within=30,
        )
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
        await agent.stop()
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
