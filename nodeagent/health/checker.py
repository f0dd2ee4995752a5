"""Runs this load-balancer node's health checks and reports what it sees; never decides.

apply() takes each version's targets (health/targets.py). run() keeps, for every target,
its path in the health-check program's map (the backend's MAC, or the next hop toward its
node and the encapsulation) and one check loop: a probe every interval, spread over the
interval so a thousand checks do not fire at once (TCP checks in C, health/tcp.py; HTTP(S)
checks a task each, their results given to the same C object). A backend becomes failing
after `fall` consecutive failures and healthy again after `rise` consecutive successes
(applied in C for both); each change bumps `changes`, so the NodeStatus that carries it
(report()) is sent at once. The controller holds a backend out only when most LB nodes see
it failing, so this node's view of its own links cannot split the Maglev tables.

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
from weir.nodeagent.health.probe import Done, Http, probe
from weir.nodeagent.health.targets import Check, Target
from weir.nodeagent.health.tcp import SLOT, TcpLoop
from weir.nodeagent.service import Backend, Frontend, NodeSettings, Service

log = get_logger("weir.health")


@dataclass
class _State:
    check: Check
    index: int  # the path index: the socket mark's lower bits
    address: tuple[str, int]  # what the check connects to: VIP:port
    mark: int  # the check's socket mark: its path
    failing: bool = False  # a new backend is healthy until `fall` failures say otherwise
    handle: int = -1  # its rise/fall state's in TcpLoop (and, TCP, its schedule)
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
        self._tcp: TcpLoop | None = None  # while run() runs
        self._by_handle: dict[int, Target] = {}
        self._started: set[Target] = set()
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
        """Reconcile the checks with the targets, until cancelled. TCP checks run in C,
        from one loop timer (health/tcp.py); each HTTP(S) check is a task of this group."""
        seen = 0
        loop = asyncio.get_running_loop()
        self._tcp = TcpLoop(loop, self._state_changed)
        async with asyncio.TaskGroup() as tg:
            wheel = _Wheel(loop, self._fire, tg)
            try:
                while True:
                    try:
                        async with asyncio.timeout(self._refresh):
                            seen = await self._wanted_changed.wait_past(seen)
                    except TimeoutError:
                        pass
                    await self._reconcile(wheel)
            finally:
                for target in list(self._states):
                    self._stop(target)
                wheel.close()
                self._tcp.close()
                self._tcp = None

    async def close(self) -> None:
        if self._path is not None:
            path, self._path = self._path, None
            await asyncio.to_thread(path.close)

    async def _reconcile(self, wheel: _Wheel) -> None:
        wanted = self._wanted
        for target in [t for t in self._states if wanted.get(t) != self._states[t].check]:
            self._stop(target)
        if not wanted:
            return
        if self._path is None and not await self._open():
            return
        for target, check in wanted.items():
            if target not in self._states:
                index = self._index()
                address = (target.vip, target.vip_port)
                self._states[target] = _State(check, index, address, mark(index))
        await self._program()
        loop = asyncio.get_running_loop()
        for target in wanted:
            if target not in self._started:
                self._started.add(target)
                state = self._states[target]
                # Spread the checks over the interval, so a thousand do not fire at once.
                first = loop.time() + random.uniform(0, state.check.interval)
                assert self._tcp is not None
                if state.check.kind == "tcp":
                    state.handle = self._tcp.add(state.address, state.mark, state.check, first)
                else:
                    state.handle = self._tcp.add_reported(state.check)
                    wheel.at(first, target, state)
                self._by_handle[state.handle] = target

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
        self._started.discard(target)  # its next check, due on the wheel, is skipped
        if state.handle >= 0 and self._tcp is not None:
            self._tcp.remove(state.handle)
            del self._by_handle[state.handle]
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

    def _fire(self, target: Target, state: _State, wheel: _Wheel) -> None:
        if self._states.get(target) is not state:
            return  # stopped (or replaced) since it was put on the wheel
        check = state.check
        started = wheel.loop.time()

        def done(reason: str | None) -> None:
            if self._states.get(target) is not state or self._tcp is None:
                return  # stopped meanwhile
            self._tcp.report(state.handle, reason)
            wheel.at(max(started + check.interval, wheel.loop.time()), target, state)

        wheel.tg.create_task(_http(state.address, state.mark, check, done))

    def _state_changed(self, handle: int, failing: bool, reason: str) -> None:
        """A target's state changed (rise or fall reached), or its reason while failing (no
        report for that alone: the next one shows it)."""
        target = self._by_handle[handle]
        state = self._states[target]
        state.reason = reason
        if failing == state.failing:
            return
        state.failing = failing
        state.since = int(time.time()) if state.failing else 0
        log.info(
            "backend failing its health check" if state.failing else "backend passes again",
            frontend=target.service_id,
            backend=f"{target.address}:{target.port}",
            reason=state.reason,
        )
        self._changes.bump()


async def _http(address: tuple[str, int], sock_mark: int, check: Check, done: Done) -> None:
    http = Http(check.http_path, check.http_status, check.host, tls=check.kind == "https")
    done(await probe(address, sock_mark, check.timeout, http))


Fire = Callable[[Target, _State, "_Wheel"], None]


class _Wheel:
    """The HTTP(S) checks due, by slot of SLOT seconds: one loop timer per slot, however
    many checks it starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Fire, tg: asyncio.TaskGroup) -> None:
        self.loop, self.tg = loop, tg
        self._fire = fire
        self._due: dict[int, list[tuple[Target, _State]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def at(self, when: float, target: Target, state: _State) -> None:
        """Fire the target's check in the slot nearest to when."""
        slot = round(when / SLOT)
        due = self._due.get(slot)
        if due is None:
            due = self._due[slot] = []
            self._timers[slot] = self.loop.call_at(slot * SLOT, self._run, slot)
        due.append((target, state))

    def _run(self, slot: int) -> None:
        del self._timers[slot]
        for target, state in self._due.pop(slot):
            self._fire(target, state, self)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._due.clear()


def _backend(t: Target) -> Backend:
    return Backend(t.address, t.port, 1, t.forwarding, t.node)
