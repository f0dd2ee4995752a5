"""`SetNodeDrain` with the Kubernetes source and two weir-controller replicas: the call made
on either replica becomes the Node's weir.dev/drain annotation, so both replicas publish the
drain, and it survives a restart of both. Undrain the same way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from weir.common.pb import pb, pb_grpc

from . import builders as b
from .fakeapi import FakeKubeAPI
from .procs import ControllerProc

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


async def drained(ctl: ControllerProc, node: str) -> bool | None:
    """The drain flag of node's BGP settings in ctl's snapshot (None: no snapshot yet)."""
    try:
        snap = await ctl.snapshot()
    except grpc.aio.AioRpcError:
        return None
    return next((n.bgp.drain for n in snap.nodes if n.node == node), None)


async def until_drained(ctls: list[ControllerProc], node: str, want: bool) -> None:
    async with asyncio.timeout(30):
        # Polling other processes' RPC: there is no local event to await.
        while [await drained(c, node) for c in ctls] != [want] * len(ctls):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def set_drain(ctl: ControllerProc, node: str, drain: bool) -> int:
    async with grpc.aio.insecure_channel(ctl.target) as ch:
        resp = await pb_grpc.NodePlaneStub(ch).SetNodeDrain(
            pb.SetNodeDrainRequest(node=node, drain=drain), timeout=15
        )
    return resp.version


async def test_drain_is_the_same_on_every_replica_and_survives_restarts(
    fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path
) -> None:
    fake.create(b.node("node-a", "10.0.0.1"))
    fake.create(b.node("node-b", "10.0.0.2"))
    fake.create(b.peer("router", "10.0.0.254"))
    lease = ["--leader-elect", "--lease-duration", "4", "--renew-deadline", "3"]
    ctls = [ControllerProc(kubeconfig, tmp_path, f"r{i}", *lease) for i in range(2)]
    try:
        for c in ctls:
            await c.start()
        await until_drained(ctls, "node-a", False)

        # Through the second replica, whichever holds the Lease.
        assert await set_drain(ctls[1], "node-a", True) > 0
        node = fake.get("v1", "Node", "", "node-a")
        assert node["metadata"]["annotations"]["weir.dev/drain"] == "true"
        await until_drained(ctls, "node-a", True)
        await until_drained(ctls, "node-b", False)

        # Both replicas restart: the annotation is the state, nothing is lost.
        for c in ctls:
            await c.stop()
        ctls = [ControllerProc(kubeconfig, tmp_path, f"s{i}", *lease) for i in range(2)]
        for c in ctls:
            await c.start()
        await until_drained(ctls, "node-a", True)

        await set_drain(ctls[0], "node-a", False)
        node = fake.get("v1", "Node", "", "node-a")
        assert "weir.dev/drain" not in (node["metadata"].get("annotations") or {})
        await until_drained(ctls, "node-a", False)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await set_drain(ctls[0], "nope", True)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    except BaseException:
        for c in ctls:
            print(c.logs())
        raise
    finally:
        for c in ctls:
            await c.close()
