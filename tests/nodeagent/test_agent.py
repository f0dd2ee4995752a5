"""The agent against the real data plane (XDP on a veth in a namespace) and real neighbours.

Each scenario runs in a forked child that has entered the LB node's network namespace (the
data plane and the resolver work on the calling process's namespace); the child returns what
it observed and the test asserts on it.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import shutil
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from weir.lab.netns import Topology, cleanup_prefix

from tests.nodeagent.segment import lb_segment
from tests.requirements import bpffs_mounted, requires, root

pytestmark = [
    pytest.mark.root,
    requires(root, bpffs_mounted),
]

PREFIX = "waga"
BPFFS = Path("/sys/fs/bpf")


def _child(ns: str, fn: Callable, args: tuple, conn) -> None:
    try:
        from pyroute2 import netns

        netns.setns(ns)
        conn.send(("ok", asyncio.run(fn(*args))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def in_netns(ns: str, fn: Callable, *args, timeout: float = 120):
    """Run the coroutine function fn(*args) in a forked child inside network namespace ns."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(ns, fn, args, child))
    proc.start()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"scenario {fn.__name__} did not finish in {timeout}s")
        status, value = parent.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        pytest.fail(f"scenario {fn.__name__} failed in the namespace:\n{value}")
    return value


@pytest.fixture
def node():
    """An LB node (eth0 10.78.0.1/24) and two hosts on its segment; a private pin dir."""
    cleanup_prefix(PREFIX)
    for old in BPFFS.glob(f"{PREFIX}-*"):  # pins of an earlier run that was killed
        shutil.rmtree(old, ignore_errors=True)
    pins = BPFFS / f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    with Topology(PREFIX) as t:
        lb, b1, b2 = lb_segment(t, "10.78.0")
        try:
            yield lb, b1, b2, pins
        finally:
            shutil.rmtree(pins, ignore_errors=True)


# -- scenario helpers (run in the child) ------------------------------------------------------


def _view(version: int, services, seed: int = 7):
    from weir.common import viewhash
    from weir.common.pb import pb
    from weir.nodeagent.controller_client import apply_message

    services = sorted(services, key=lambda s: s.id)  # a view's services are sorted by id
    snap = pb.Snapshot(
        version=version,
        node="lb",
        maglev_seed=seed,
        services=services,
        node_config=pb.NodeConfig(load_balancer=True),
    )
    snap.hash = viewhash.view_hash(snap)
    return apply_message(None, "lb", pb.ControllerMessage(snapshot=snap))


def _service(vip: str, addrs: list[str], table_size: int = 251):
    from weir.common.pb import pb

    return pb.Service(
        id=f"{vip}:80/TCP",
        vip=vip,
        port=80,
        protocol=pb.PROTOCOL_TCP,
        strategy=pb.STRATEGY_MAGLEV,
        maglev_table_size=table_size,
        backends=[pb.Backend(address=a, port=80, weight=1, ready=True) for a in sorted(addrs)],
    )


def _config(pins: Path, **sizes):
    from weir.nodeagent.dataplane import DataplaneConfig

    return DataplaneConfig(interface="eth0", bpffs=pins, xdp_mode="generic", **sizes)


def _errors(ack) -> dict[str, str]:
    return {e.service_id: e.message for e in ack.service_errors}


def _backends_of(dp, sid: str) -> list[tuple[str, bytes]]:
    svc = dp.applied()[sid]
    return sorted((b.address, b.mac) for b in svc.backends)


@dataclass
class Outcomes:
    """The agent's metrics, as far as the scenarios need them: each version's outcome."""

    seen: list[dict[str, int]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, int]:
        return self.seen[-1]

    def observe_apply(self, version: int, seconds: float, outcome: Mapping[str, int]) -> None:
        self.seen.append(dict(outcome))

    def set_services(self, applied: int, failed: int, incomplete: int) -> None:
        pass

    def set_maps(self, usage) -> None:
        pass

    def set_roles(self, active) -> None:
        pass

    def set_healthy(self, healthy) -> None:
        pass


@dataclass
class Node:
    agent: object
    balancer: object
    upkeep: object
    dp: object
    outcomes: Outcomes
    adopted: int  # services found in the pinned maps


async def _make_agent(cfg, resolver) -> Node:
    """An agent with the load-balancer role, its data plane opened up front so a scenario
    can see what it adopted."""
    from weir.nodeagent.agent import Agent
    from weir.nodeagent.backend_macs import BackendMacs
    from weir.nodeagent.dataplane import Dataplane
    from weir.nodeagent.lb_role import LoadBalancerRole
    from weir.nodeagent.mac_upkeep import MacUpkeep

    macs = BackendMacs(resolver)
    role = LoadBalancerRole(functools.partial(Dataplane.open, cfg), macs)
    await role.open()
    outcomes = Outcomes()
    agent = Agent([role], metrics=outcomes)
    balancer = role.balancer
    adopted = len(balancer.applied)
    return Node(agent, balancer, MacUpkeep(balancer, macs), role.dataplane, outcomes, adopted)


# -- scenarios --------------------------------------------------------------------------------


async def scenario_per_service_errors(pins: Path) -> dict:
    from weir.nodeagent.neighbors import NeighborResolver

    ok1 = _service("192.0.2.1", ["10.78.0.11"])
    bad = _service("192.0.2.2", ["10.78.0.11"], table_size=100)
    ok2 = _service("192.0.2.3", ["10.78.0.12"])
    over = _service("192.0.2.4", ["10.78.0.12"])
    async with NeighborResolver("eth0", timeout=0.5) as res:
        n = await _make_agent(_config(pins, max_services=2), res)
        try:
            ack1 = await n.agent.handle(_view(1, [ok1, bad, ok2, over]))
            applied1 = sorted(n.dp.applied())
            # Removing one service makes room: the one over capacity goes in on the next version.
            ack2 = await n.agent.handle(_view(2, [bad, ok2, over]))
            applied2 = sorted(n.dp.applied())
            status = await n.agent.status()
        finally:
            n.dp.close(detach=True)
    return {
        "ack1": _errors(ack1),
        "applied1": applied1,
        "ack2": _errors(ack2),
        "applied2": applied2,
        "status_errors": sorted(e.service_id for e in status.service_errors),
        "maps": {m.name: (m.used, m.capacity) for m in status.maps},
    }


def test_one_bad_service_does_not_block_the_others(node) -> None:
    lb, *_, pins = node
    out = in_netns(lb.name, scenario_per_service_errors, pins)
    assert set(out["ack1"]) == {"192.0.2.2:80/TCP", "192.0.2.4:80/TCP"}
    assert (
        "not prime" in out["ack1"]["192.0.2.2:80/TCP"] or "range" in out["ack1"]["192.0.2.2:80/TCP"]
    )
    assert out["applied1"] == ["192.0.2.1:80/TCP", "192.0.2.3:80/TCP"]
    assert set(out["ack2"]) == {"192.0.2.2:80/TCP"}
    assert out["applied2"] == ["192.0.2.3:80/TCP", "192.0.2.4:80/TCP"]
    assert out["status_errors"] == ["192.0.2.2:80/TCP"]
    assert out["maps"], "NodeStatus carries map usage"


def _ported(vip: str, ports: range, created: int):
    """A service whose backends are ports of one host (b1): each is a backend entry."""
    from weir.common.pb import pb

    svc = _service(vip, [])
    svc.backends.extend(pb.Backend(address="10.78.0.11", port=p, ready=True) for p in ports)
    svc.created_unix_seconds = created
    return svc


async def scenario_capacity(pins: Path) -> dict:
    from weir.nodeagent.neighbors import NeighborResolver

    older = _ported("192.0.2.9", range(80, 84), created=100)  # 4 backends
    younger = _ported("192.0.2.1", range(90, 92), created=200)  # 2, first by id
    huge = _ported("192.0.2.5", range(100, 106), created=50)  # 6: 12 while replaced
    async with NeighborResolver("eth0", timeout=0.5) as res:
        n = await _make_agent(_config(pins, max_backends=10), res)
        try:
            ack1 = await n.agent.handle(_view(1, [older, younger, huge]))
            status1 = await n.agent.status()
            # older gives up its backends while younger replaces its 2 with 5 new ones:
            # 4 + 2 + 5 entries would not fit at once, 2 + 5 do once older is written.
            emptied = _ported("192.0.2.9", range(0), created=100)
            grown = _ported("192.0.2.1", range(200, 205), created=200)
            ack2 = await n.agent.handle(_view(2, [emptied, grown]))
            status2 = await n.agent.status()
            backends = {sid: len(svc.backends) for sid, svc in n.dp.applied().items()}
        finally:
            n.dp.close(detach=True)

    def maps(status) -> dict:
        return {m.name: (m.used, m.capacity, m.reserved) for m in status.maps}

    return {
        "ack1": _errors(ack1),
        "maps1": maps(status1),
        "ack2": _errors(ack2),
        "maps2": maps(status2),
        "backends": backends,
    }


def test_capacity_is_handed_out_with_room_for_updates(node) -> None:
    lb, *_, pins = node
    out = in_netns(lb.name, scenario_capacity, pins)
    assert list(out["ack1"]) == ["192.0.2.5:80/TCP"]
    assert out["ack1"]["192.0.2.5:80/TCP"].startswith(
        "can never fit on this node: needs 12 backend entries, the map holds 10 (--max-backends)"
    )
    assert out["maps1"]["backends"] == (6, 10, 4)  # the largest service's 4 kept free
    assert out["ack2"] == {}
    assert out["backends"] == {"192.0.2.9:80/TCP": 0, "192.0.2.1:80/TCP": 5}
    assert out["maps2"]["backends"] == (5, 10, 5)


async def scenario_unresolved_backend(pins: Path, b2_ns: str) -> dict:
    from weir.lab.netns import sh
    from weir.nodeagent.neighbors import NeighborResolver

    svc = _service("192.0.2.1", ["10.78.0.11", "10.78.0.99"])
    async with NeighborResolver("eth0", timeout=0.3) as res:
        n = await _make_agent(_config(pins), res)
        try:
            ack = await n.agent.handle(_view(1, [svc]))
            first = _backends_of(n.dp, svc.id)
            serving = sorted(n.balancer.serving_vips())
            # The missing backend comes up (as a second address of b2).
            await asyncio.to_thread(
                sh, ["ip", "-n", b2_ns, "addr", "add", "10.78.0.99/24", "dev", "eth0"]
            )
            # The kernel is still soliciting the address (one try a second): bounded retries.
            retried: list[str] = []
            for _ in range(50):
                retried = await n.upkeep.retry_unresolved()
                if retried:
                    break
                await asyncio.sleep(0.1)
            second = _backends_of(n.dp, svc.id)
            errors = n.balancer.errors()
        finally:
            n.dp.close(detach=True)
    return {
        "ack": _errors(ack),
        "first": [a for a, _ in first],
        "serving": serving,
        "retried": retried,
        "second": [a for a, _ in second],
        "errors": errors,
    }


def test_unresolved_backend_is_excluded_then_retried(node) -> None:
    lb, _, b2, pins = node
    out = in_netns(lb.name, scenario_unresolved_backend, pins, b2.name)
    assert list(out["ack"]) == ["192.0.2.1:80/TCP"]
    assert "10.78.0.99" in out["ack"]["192.0.2.1:80/TCP"]
    assert out["first"] == ["10.78.0.11"]
    assert out["serving"] == ["192.0.2.1"]
    assert out["retried"] == ["192.0.2.1:80/TCP"]
    assert out["second"] == ["10.78.0.11", "10.78.0.99"]
    assert out["errors"] == {}


async def scenario_restart(pins: Path) -> dict:
    from weir.nodeagent.neighbors import NeighborResolver

    services = [
        _service("192.0.2.1", ["10.78.0.11", "10.78.0.12"]),
        _service("192.0.2.2", ["10.78.0.12"]),
    ]
    async with NeighborResolver("eth0", timeout=0.5) as res:
        n = await _make_agent(_config(pins), res)
        ack1 = await n.agent.handle(_view(1, services))
        first = n.outcomes.last
        n.dp.close()  # an agent that stops: program attached, maps pinned
        n2 = await _make_agent(_config(pins), res)
        try:
            adopted = n2.adopted
            ack2 = await n2.agent.handle(_view(5, services))
            second = n2.outcomes.last
            ack3 = await n2.agent.handle(_view(6, services[:1]))
            third = n2.outcomes.last
            left = sorted(n2.dp.applied())
        finally:
            n2.dp.close(detach=True)
    return {
        "acks": [_errors(a) for a in (ack1, ack2, ack3)],
        "first": first,
        "adopted": adopted,
        "second": second,
        "third": third,
        "left": left,
    }


def test_restart_adopts_pins_and_rewrites_nothing(node) -> None:
    lb, *_, pins = node
    out = in_netns(lb.name, scenario_restart, pins)
    assert out["acks"] == [{}, {}, {}]
    assert out["first"]["written"] == 2
    assert out["adopted"] == 2
    assert out["second"]["written"] == 0 and out["second"]["unchanged"] == 2
    assert out["third"]["removed"] == 1
    assert out["left"] == ["192.0.2.1:80/TCP"]


async def scenario_mac_change(pins: Path, b1_ns: str) -> dict:
    from weir.lab.netns import sh
    from weir.nodeagent.neighbors import NeighborResolver

    svc = _service("192.0.2.1", ["10.78.0.11", "10.78.0.12"])
    new_mac = "02:00:00:78:00:11"
    async with NeighborResolver("eth0", timeout=0.5) as res:
        n = await _make_agent(_config(pins), res)
        try:
            await n.agent.handle(_view(1, [svc]))
            before = dict(_backends_of(n.dp, svc.id))
            await asyncio.to_thread(
                sh, ["ip", "-n", b1_ns, "link", "set", "eth0", "address", new_mac]
            )
            await asyncio.to_thread(
                sh, ["ip", "neigh", "change", "10.78.0.11", "dev", "eth0", "nud", "stale"]
            )
            reprogrammed: list[str] = []
            for _ in range(100):  # the kernel re-verifies in the background: bounded wait
                reprogrammed = await n.upkeep.refresh_macs()
                if reprogrammed:
                    break
                await asyncio.sleep(0.05)
            after = dict(_backends_of(n.dp, svc.id))
        finally:
            n.dp.close(detach=True)
    return {"before": before, "after": after, "reprogrammed": reprogrammed, "new": new_mac}


def test_changed_backend_mac_is_reprogrammed(node) -> None:
    lb, b1, _, pins = node
    lb.run(["sysctl", "-qw", "net.ipv4.neigh.eth0.delay_first_probe_time=0"])
    lb.run(["sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=100"])
    out = in_netns(lb.name, scenario_mac_change, pins, b1.name)
    assert out["reprogrammed"] == ["192.0.2.1:80/TCP"]
    new = bytes(int(x, 16) for x in out["new"].split(":"))
    assert out["before"]["10.78.0.11"] != new
    assert out["after"]["10.78.0.11"] == new
    assert out["after"]["10.78.0.12"] == out["before"]["10.78.0.12"]


async def scenario_client_ip_affinity(pins: Path) -> dict:
    from structlog.testing import capture_logs
    from weir.common.pb import pb
    from weir.nodeagent.neighbors import NeighborResolver

    plain = _service("192.0.2.1", ["10.78.0.11", "10.78.0.12"])
    sticky = pb.Service()
    sticky.CopyFrom(plain)
    sticky.session_affinity = pb.SESSION_AFFINITY_CLIENT_IP
    sticky.affinity_timeout_seconds = 10800
    longer = pb.Service()
    longer.CopyFrom(sticky)
    longer.affinity_timeout_seconds = 60
    out: dict = {"outcomes": [], "affinity": []}
    async with NeighborResolver("eth0", timeout=0.5) as res:
        n = await _make_agent(_config(pins), res)
        try:
            with capture_logs() as logs:
                for version, svc in enumerate([plain, sticky, longer, plain, sticky], 1):
                    await n.agent.handle(_view(version, [svc]))
                    out["outcomes"].append(n.outcomes.last["written"])
                    out["affinity"].append(n.dp.applied()[svc.id].frontend.affinity)
        finally:
            n.dp.close(detach=True)
    out["notes"] = [e for e in logs if "ClientIP" in e["event"]]
    return out


def test_client_ip_affinity_reaches_the_data_plane(node) -> None:
    lb, *_, pins = node
    out = in_netns(lb.name, scenario_client_ip_affinity, pins)
    # none -> ClientIP -> (timeout only: nothing to write) -> none -> ClientIP
    assert out["outcomes"] == [1, 1, 0, 1, 1]
    assert out["affinity"] == ["none", "client_ip", "client_ip", "none", "client_ip"]
    # the timeout has no meaning for hash-based affinity: said once, not as an error
    (note,) = out["notes"]
    assert note["log_level"] == "info" and note["timeout_seconds"] == 10800
