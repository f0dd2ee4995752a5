"""Runs this load-balancer node's health checks and reports what it sees; never decides.

apply() takes each version's targets (health/targets.py). run() keeps, for every target,
its path in the health-check program's map (the backend's MAC, or the next hop toward its
node and the encapsulation) and one check loop: a probe every interval, spread over the
interval so a thousand checks do not fire at once. A backend becomes failing after `fall`
consecutive failures and healthy again after `rise` consecutive successes; each change
bumps `changes`, so the NodeStatus that carries it (report()) is sent at once. The
controller holds a backend out only when most LB nodes see it failing, so this node's view
of its own links cannot split the Maglev tables.

A node whose health-check program cannot be set up reports no frontend as checked: it does
not vote, rather than vote "failing" for every backend.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.nodeagent.backend_macs import BackendMacs
from weir.nodeagent.dataplane.hcpath import Encap, HcPath, HcRoute, mark
from weir.nodeagent.health.probe import probe
from weir.nodeagent.health.targets import Check, Target
from weir.nodeagent.service import Backend, Frontend, NodeSettings, Service

log = get_logger("weir.health")


@dataclass
class _State:
    check: Check
    index: int  # the path index: the socket mark's lower bits
    failing: bool = False  # a new backend is healthy until `fall` failures say otherwise
    streak: int = 0  # consecutive results against the current state
    since: int = 0  # unix time it became failing
    reason: str = ""  # the last failure


class HealthChecker:
    def __init__(
        self,
        open_path: Callable[[], HcPath],
        macs: BackendMacs,
        changes: Generation,
        *,
        refresh: float = 10.0,  # seconds between MAC re-resolutions
    ) -> None:
        self._open_path = open_path
        self._macs = macs
        self._changes = changes  # bumped when what report() shows changes
        self._refresh = refresh
        self._path: HcPath | None = None
        self._path_error: str | None = None
        self._wanted: Mapping[Target, Check] = {}
        self._node = NodeSettings()
        self._wanted_changed = Generation()
        self._states: dict[Target, _State] = {}
        self._tasks: dict[Target, asyncio.Task[None]] = {}
        self._free: list[int] = []
        self._next_index = 0

    def apply(self, targets: Mapping[Target, Check], node: NodeSettings) -> None:
        """The targets of a new version (none without the load-balancer role)."""
        wanted = targets if node.load_balancer else {}
        if wanted != self._wanted or node != self._node:
            self._wanted, self._node = dict(wanted), node
            self._wanted_changed.bump()

    def report(self) -> tuple[list[str], list[pb.BackendHealth]]:
        """(frontends checked, backends seen failing) for the NodeStatus."""
        if self._path is None:
            return [], []
        checked = sorted({t.service_id for t in self._states})
        failing = [
            pb.BackendHealth(
                service_id=t.service_id,
                address=t.address,
                port=t.port,
                since_unix=s.since,
                reason=s.reason,
            )
            for t, s in sorted(self._states.items())
            if s.failing
        ]
        return checked, failing

    async def run(self) -> None:
        """Reconcile the check loops with the targets, until cancelled."""
        seen = 0
        async with asyncio.TaskGroup() as tg:
            try:
                while True:
                    try:
                        async with asyncio.timeout(self._refresh):
                            seen = await self._wanted_changed.wait_past(seen)
                    except TimeoutError:
                        pass
                    await self._reconcile(tg)
            finally:
                for task in self._tasks.values():
                    task.cancel()

    async def close(self) -> None:
        if self._path is not None:
            path, self._path = self._path, None
            await asyncio.to_thread(path.close)

    async def _reconcile(self, tg: asyncio.TaskGroup) -> None:
        wanted = self._wanted
        for target in [t for t in self._states if wanted.get(t) != self._states[t].check]:
            self._stop(target)
        if not wanted:
            return
        if self._path is None and not await self._open():
            return
        for target, check in wanted.items():
            if target not in self._states:
                self._states[target] = _State(check, self._index())
        await self._program()
        for target in wanted:
            if target not in self._tasks:
                self._tasks[target] = tg.create_task(self._loop(target), name="health-check")

    async def _open(self) -> bool:
        try:
            self._path = await asyncio.to_thread(self._open_path)
        except Exception as exc:
            if str(exc) != self._path_error:
                log.error("cannot set up the health-check path; not checking", error=str(exc))
            self._path_error = str(exc)
            return False
        self._path_error = None
        return True

    def _index(self) -> int:
        if self._free:
            return self._free.pop()
        self._next_index += 1
        return self._next_index - 1

    def _stop(self, target: Target) -> None:
        state = self._states.pop(target)
        self._free.append(state.index)
        task = self._tasks.pop(target, None)
        if task is not None:
            task.cancel()
        if state.failing:
            self._changes.bump()

    async def _program(self) -> None:
        """Resolve each target's MAC and write every path; an unresolved one has no path,
        so its checks are dropped and fail, as this node's traffic to it would."""
        assert self._path is not None
        backends = {t: _backend(t) for t in self._states}
        found = await self._macs.resolve(backends.values())
        probe_service = Service(Frontend("health", "", 0, 6), 0, 0, tuple(set(backends.values())))
        reach = self._macs.reachable(probe_service, found)
        macs = {b: t.mac for b, t in zip(reach.members, reach.targets, strict=True)}
        routes: dict[int, HcRoute] = {}
        node = self._node
        for target, state in self._states.items():
            mac = macs.get(backends[target])
            if mac is None:
                continue
            encap = None
            if target.forwarding == "encap":
                encap = Encap(
                    node.address, target.node, target.address, target.port, node.encap_port
                )
            routes[state.index] = HcRoute(mac, encap)
        await asyncio.to_thread(self._path.set, routes)

    async def _loop(self, target: Target) -> None:
        state = self._states[target]
        check = state.check
        http = (check.http_path, check.http_status) if check.kind == "http" else None
        address, sock_mark = (target.vip, target.vip_port), mark(state.index)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, check.interval))  # spread the checks out
        next_at = loop.time()
        while True:
            self._record(target, state, await probe(address, sock_mark, check.timeout, http))
            next_at = max(next_at + check.interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    def _record(self, target: Target, state: _State, reason: str | None) -> None:
        if reason is not None:
            state.reason = reason
        if (reason is None) != state.failing:  # agrees with the current state
            state.streak = 0
            return
        state.streak += 1
        if state.streak < (state.check.rise if state.failing else state.check.fall):
            return
        state.failing, state.streak = not state.failing, 0
        state.since = int(time.time()) if state.failing else 0
        log.info(
            "backend failing its health check" if state.failing else "backend passes again",
            frontend=target.service_id,
            backend=f"{target.address}:{target.port}",
            reason=state.reason,
        )
        self._changes.bump()


def _backend(t: Target) -> Backend:
    return Backend(t.address, t.port, 1, t.forwarding, t.node)
