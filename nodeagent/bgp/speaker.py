"""BGPSpeaker: announces this node's VIPs through a supervised ExaBGP 5.

The agent tells the speaker two things, whenever they change: the node's BGP settings
(`configure`, from the snapshot) and the prefixes the node should announce right now
(`announce`: the VIPs its data plane serves). One supervisor task owns ExaBGP and brings
it to that state.

Routes. A prefix is announced to a peer only when the config has an Advertisement for it
that applies to that peer (its peer list, the address family): the controller decides
what may be announced, the agent decides when. Every route goes through ExaBGP's API,
`neighbor <peer> announce route <prefix> next-hop <our session address> ...` (and
`withdraw route <prefix>`), each confirmed by ExaBGP. The next hop is the local address
ExaBGP reports when the session comes up: what `next-hop self` means, written out,
because ExaBGP resolves `self` when a command arrives and forgets the address it
discovered when its config is reloaded. So a peer gets its routes when its session
first comes up, and ExaBGP keeps them (adj-rib-out) across later session flaps.

End-of-RIB and graceful restart. ExaBGP runs with `manual-eor`: after a session comes
up, the speaker sends the routes, then End-of-RIB. A router that negotiated graceful
restart keeps our routes (stale) when a session ends without a NOTIFICATION (the agent
or node restarting) and drops the stale ones only at our End-of-RIB, so it never sees a
restarted agent's empty table. ExaBGP also starts only once the agent has said what to
announce (the first `announce`, `withdraw_all` or `drain`).

What was really sent. ExaBGP reports every UPDATE it sends; sessions() counts routes
from those, announced() is what is on the wire now, and withdraw_all / drain / stop
wait for the withdrawals to be sent, not just accepted.

Peer changes at runtime (added, removed, any session setting). The speaker withdraws the
routes of removed peers first (with graceful restart ExaBGP closes sessions without a
NOTIFICATION, and the router would keep them as stale), rewrites the config and sends
`reload`: ExaBGP keeps the sessions whose settings did not change, re-establishes the
changed ones and starts the new ones, so adding a router does not flap the others.

Failures. If ExaBGP dies or stops answering, its sessions are reported idle and it is
started again after a backoff (0.5 s doubling to 30 s, reset after a minute-long run).

Stopping. `stop(graceful=True)` ends ExaBGP the way a crash does (SIGKILL, the sessions
just close), so routers with graceful restart keep our routes while the agent restarts.
`stop(graceful=False)` withdraws everything, waits until the withdrawals are sent, then
stops ExaBGP (SIGTERM): the routers drop our routes at once. `drain(grace_seconds)`
withdraws everything and waits until that is sent, then waits grace_seconds for the
routers to converge while the data plane keeps forwarding; the agent then exits
(stop(graceful=False)) or calls resume().

BFD. Peers with BFD settings get a BFD session each (nodeagent/bfd: a daemon process of
its own, so its timing does not depend on this event loop). When a BFD session that was up
goes down, the BGP session is torn down at once with a NOTIFICATION (Cease, "BFD Down"),
never left to end like a crash, so no router keeps our routes as for a graceful restart;
ExaBGP connects again by itself, and the peer gets the routes again once BFD is back up.
A peer whose BFD is `required` gets no routes unless its BFD session is up, from the
start. The peer saying AdminDown is not a failure (RFC 5882): nothing is torn down, and
the routes stay; nor is BFD taken off a peer (its settings removed) a failure.

`on_change` is called (synchronously, from the event loop) whenever sessions() (apart
from uptime), announced() or draining change: the agent sends a NodeStatus then.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.nodeagent.bfd import BFDMonitor, BFDOptions, Negotiated, State
from weir.nodeagent.bgp import config as bgpconfig
from weir.nodeagent.bgp import exaconf
from weir.nodeagent.bgp.config import Problem, Route, SpeakerConfig
from weir.nodeagent.bgp.events import Message, NeighborEvent, SentUpdate
from weir.nodeagent.bgp.process import ExaBGPError, ExaBGPOptions, ExaBGPProcess
from weir.nodeagent.bgp.sessions import SessionTable
from weir.nodeagent.bgp.waiting import first_done

log = get_logger("weir.bgp")

Plan = dict[str, dict[str, Route]]  # peer address -> prefix -> route
Rib = dict[str, dict[str, tuple[Route, str]]]  # peer address -> prefix -> (route, next hop)


class BGPSpeaker:
    BACKOFF_MIN = 0.5
    BACKOFF_MAX = 30.0
    STABLE_RUN = 60.0  # a run this long resets the backoff
    SYNC_TIMEOUT = 10.0  # withdraw_all / drain / stop wait this long for the withdrawals
    STOP_TIMEOUT = 15.0

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        default_router_id: str = "",
        options: ExaBGPOptions | None = None,
        bfd_options: BFDOptions | None = None,
        on_change: Callable[[], object] | None = None,
    ) -> None:
        """workdir: where ExaBGP's config and API socket live (a private temporary
        directory when None, removed on stop). default_router_id: used when the config
        has none (the node's IPv4 address). bfd_options: how to run the BFD daemon (by
        default beside ExaBGP, under the same prefix)."""
        self._own_workdir = workdir is None
        self._workdir = workdir
        self._default_router_id = default_router_id
        self._opts = options or ExaBGPOptions()
        self._on_change = on_change

        self._cfg = SpeakerConfig()
        self._errors: list[Problem] = []
        self._refused: dict[tuple[str, str], Problem] = {}  # (peer, prefix): ExaBGP said no
        self._prefixes: set[str] = set()  # what the agent wants announced
        self._told = False  # the agent said what to announce at least once
        self._draining = False
        self._final = False  # withdrawing everything before a clean stop
        self._stopping: bool | None = None  # None, or stop(graceful=...)

        self._sessions = SessionTable()
        # Our address on each session the running ExaBGP has brought up at least once,
        # and what it holds for those peers.
        self._local: dict[str, str] = {}
        self._rib: Rib = {}
        self._eor_due: set[str] = set()
        self._bfd = BFDMonitor(
            bfd_options or BFDOptions(prefix=self._opts.prefix), on_change=self._on_bfd
        )
        self._bfd_up: set[str] = set()  # peers whose BFD session is up (or AdminDown)
        self._bfd_lost: set[str] = set()  # peers whose BFD went down, until it is up again
        self._teardown_due: set[str] = set()  # BFD went down: close the BGP session
        self._proc: ExaBGPProcess | None = None
        self._wake = asyncio.Event()  # work for the supervisor
        self._tick = asyncio.Event()  # something changed (for waiters)
        self._task: asyncio.Task[None] | None = None
        self._status_key: object = None

    # ---- the agent's side ------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="weir-bgp-"))
        self._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._bfd.start()
        self._task = asyncio.create_task(self._supervise(), name="bgp-speaker")

    async def configure(self, cfg: pb.BGPConfig) -> None:
        parsed, errors = bgpconfig.parse(cfg, self._default_router_id)
        for err in errors:
            if err not in self._errors:
                log.error("bad BGP setting", error=str(err))
        self._errors = errors
        if parsed != self._cfg:
            self._cfg = parsed
            if self._proc is None:  # otherwise the supervisor switches at the reload
                self._sessions.set_peers(parsed.peers)
            self._bfd.set_sessions({p.address: p.bfd.settings for p in parsed.peers if p.bfd})
            self._changed()

    async def announce(self, prefixes: set[str]) -> None:
        """The full set of prefixes (VIPs; "/32" optional) to announce now."""
        wanted = set()
        for p in prefixes:
            try:
                wanted.add(exaconf.normalise_prefix(p))
            except ValueError:
                log.error("not a prefix, not announced", prefix=p)
        if wanted != self._prefixes or not self._told:
            self._prefixes, self._told = wanted, True
            self._changed()

    async def withdraw_all(self) -> None:
        """Withdraw every route; returns once the withdrawals are sent (waiting at most
        SYNC_TIMEOUT: a peer may be unreachable, and ExaBGP may be restarting)."""
        await self.announce(set())
        await self._settle("withdraw_all")

    async def drain(self, grace_seconds: float) -> None:
        """Withdraw everything and keep it withdrawn (announce() calls are remembered for
        resume(), not announced), wait until the withdrawals are sent, then give the
        routers grace_seconds to move the flows while the data plane forwards. No grace
        when nothing was announced: no router has flows to move."""
        announced = self.announced()
        self._draining, self._told = True, True
        self._changed()
        await self._settle("drain")
        if announced:
            log.info("drain: routes withdrawn, grace period", seconds=grace_seconds)
            await asyncio.sleep(grace_seconds)

    def resume(self) -> None:
        """End a drain: announce again what announce() last asked for."""
        if self._draining:
            self._draining = False
            self._changed()

    async def settled(self) -> None:
        """Until ExaBGP holds exactly the routes wanted now and every established session
        has been sent them (bound it with asyncio.timeout)."""
        while not self._in_sync():
            self._tick.clear()
            await self._tick.wait()

    def sessions(self) -> list[pb.BGPSessionStatus]:
        out = self._sessions.status()
        with_bfd = {p.address for p in self._cfg.peers if p.bfd}
        for s in out:
            if s.address in with_bfd:
                _show_bfd(s, self._bfd.status(s.address))
        return out

    def announced(self) -> list[str]:
        """Prefixes announced on at least one session now."""
        return sorted(self._sessions.on_wire())

    @property
    def draining(self) -> bool:
        return self._draining

    def errors(self) -> list[Problem]:
        """Problems with the last configuration (the bad parts were skipped), and routes
        ExaBGP refused."""
        return [*self._errors, *(self._refused[k] for k in sorted(self._refused))]

    def in_sync(self) -> bool:
        """ExaBGP holds exactly the routes wanted now, and every established session has
        been sent them."""
        return self._in_sync()

    async def stop(self, graceful: bool) -> None:
        """graceful: keep our routes at graceful-restart peers (the agent restarts);
        otherwise withdraw everything first. See the module docstring."""
        if not graceful and self._proc is not None:
            self._final = True
            self._changed()
            await self._settle("stop")
        self._stopping = graceful
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.STOP_TIMEOUT)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        # After ExaBGP: the peers learn of BFD going away (AdminDown, not a failure) only
        # once the BGP sessions ended the way asked for.
        await self._bfd.stop(admin_down=True)
        if self._own_workdir and self._workdir is not None:
            await asyncio.to_thread(shutil.rmtree, self._workdir, True)

    # ---- state -------------------------------------------------------------------------

    def _plan(self) -> Plan:
        if self._draining or self._final:
            return self._cfg.routes_for(set())
        plan = self._cfg.routes_for(self._prefixes)
        for peer in self._cfg.peers:
            if peer.bfd and peer.address not in self._bfd_up:
                if peer.bfd.required or peer.address in self._bfd_lost:
                    plan[peer.address] = {}  # not used until BFD says the path works
        return plan

    def _should_run(self) -> bool:
        return self._stopping is None and self._cfg.enabled and self._told

    def _wanted(self, peer: str, routes: dict[str, Route]) -> dict[str, tuple[Route, str]]:
        return {p: (r, self._local[peer]) for p, r in routes.items()}

    def _rib_matches(self) -> bool:
        plan = self._plan()
        return not self._eor_due and all(
            rib == self._wanted(peer, plan.get(peer, {})) for peer, rib in self._rib.items()
        )

    def _in_sync(self) -> bool:
        plan = self._plan()
        return self._rib_matches() and all(
            self._sessions.on_wire_to([peer]) == set(plan.get(peer, {}))
            for peer in self._rib
            if self._sessions.established(peer)
        )

    def _withdrawn(self) -> bool:
        """Nothing is announced that should not be: accepted by ExaBGP and sent."""
        wanted = {p for routes in self._plan().values() for p in routes}
        return self._rib_matches() and self._sessions.on_wire() <= wanted

    async def _settle(self, what: str) -> None:
        try:
            async with asyncio.timeout(self.SYNC_TIMEOUT):
                while not self._withdrawn():
                    self._tick.clear()
                    await self._tick.wait()
        except TimeoutError:
            log.warning("withdrawals not confirmed in time", during=what)

    def _changed(self) -> None:
        self._wake.set()
        self._notify()

    def _notify(self) -> None:
        self._tick.set()
        key = (
            [
                (s.peer, s.address, s.state, s.routes_sent, s.bfd_state, s.bfd_remote_state,
                 s.bfd_transmit_ms, s.bfd_receive_ms, s.bfd_detect_ms)
                for s in self.sessions()
            ],
            self.announced(),
            self._draining,
            self._in_sync(),
            len(self._refused),
        )  # fmt: skip
        if key == self._status_key:
            return
        self._status_key = key
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("bgp on_change callback failed")

    def _on_bfd(self, peer: str) -> None:
        shown = self._bfd.status(peer)
        # The peer taking BFD down on purpose (AdminDown) is no failure of the path.
        up = shown is not None and (
            shown.state == State.UP or shown.remote_state == State.ADMIN_DOWN
        )
        if not any(p.bfd and p.address == peer for p in self._cfg.peers):
            self._bfd_up.discard(peer)  # BFD taken off the peer: no failure of the path
            self._bfd_lost.discard(peer)
        elif up and peer not in self._bfd_up:
            log.info("bfd up", peer=peer)
            self._bfd_up.add(peer)
            self._bfd_lost.discard(peer)
            self._wake.set()
        elif not up and peer in self._bfd_up:
            diag = shown.diag.label if shown is not None else "no BFD daemon"
            log.warning("bfd down: closing the BGP session", peer=peer, diagnostic=diag)
            self._bfd_up.discard(peer)
            self._bfd_lost.add(peer)
            self._teardown_due.add(peer)
            self._wake.set()
        self._notify()

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, SentUpdate):
            if self._sessions.apply_update(msg):
                self._notify()
        elif isinstance(msg, NeighborEvent):
            if msg.kind == "state" and msg.state in ("up", "down"):
                log.info("bgp session", peer=msg.peer, state=msg.state, reason=msg.reason)
            changed = self._sessions.apply(msg)
            if msg.kind == "state" and msg.state == "up" and self._sessions.tracks(msg.peer):
                # Our address on the session is known now: routes can go, then End-of-RIB.
                if msg.local:
                    self._local[msg.peer] = msg.local
                    self._rib.setdefault(msg.peer, {})
                self._eor_due.add(msg.peer)
                self._wake.set()
            if changed:
                self._notify()

    # ---- supervision -------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while self._stopping is None:
            if not self._should_run():
                self._wake.clear()
                await self._wake.wait()
                continue
            began = time.monotonic()
            try:
                await self._run_once()
                failures = 0
            except Exception as exc:
                failures = 0 if time.monotonic() - began > self.STABLE_RUN else failures + 1
                delay = min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** max(0, failures - 1))
                if isinstance(exc, ExaBGPError):
                    log.error("exabgp failed, restarting it", error=str(exc), delay=delay)
                else:  # a bug of ours: keep announcing what we can, but say it loudly
                    log.exception("bgp speaker failed, restarting exabgp", delay=delay)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # a config change or stop() ends the wait early
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _run_once(self) -> None:
        """Run one ExaBGP until it dies, BGP is unconfigured, or stop() is called."""
        assert self._workdir is not None
        proc = ExaBGPProcess(self._workdir, self._opts, self._on_message)
        notify_peers = True
        try:
            running = self._cfg
            self._sessions.set_peers(running.peers)
            self._wake.clear()
            self._proc = proc
            await proc.start(exaconf.render(running, proc.helper()), exaconf.keepalives(running))
            while True:
                running = await self._sync(proc, running)
                _, died = await first_done(self._wake.wait(), proc.wait())
                if not died.cancelled():
                    raise ExaBGPError(died.result())
                self._wake.clear()
                if not self._should_run():
                    notify_peers = not self._stopping  # stop(graceful=True): like a crash
                    return
        except BaseException:
            notify_peers = False  # broken, or cancelled like a dying agent: act like one
            raise
        finally:
            await proc.stop(notify_peers)
            self._proc = None
            self._local.clear()
            self._rib.clear()
            self._eor_due.clear()
            self._teardown_due.clear()
            self._sessions.reset()
            self._sessions.set_peers(self._cfg.peers)
            self._notify()

    async def _sync(self, proc: ExaBGPProcess, running: SpeakerConfig) -> SpeakerConfig:
        """Bring the running ExaBGP to the wanted peers and routes; returns the config it
        runs now."""
        while True:
            cfg, plan = self._cfg, self._plan()
            if not cfg.enabled:
                return running
            if cfg.session_settings() != running.session_settings():
                running = await self._reload(proc, running, cfg)
                continue
            for address in sorted(self._teardown_due):
                self._teardown_due.discard(address)
                if self._sessions.established(address) and not await proc.teardown(address):
                    log.error("exabgp refused to close a session", peer=address)
            for address in list(self._rib):
                await self._sync_peer(proc, address, plan.get(address, {}))
            for peer in cfg.peers:
                if peer.address in self._eor_due:
                    self._eor_due.discard(peer.address)
                    if self._sessions.established(peer.address):
                        await proc.command(exaconf.eor(peer))
            if (
                cfg is self._cfg
                and plan == self._plan()
                and not self._eor_due
                and not self._teardown_due
            ):
                self._notify()
                return running

    async def _reload(
        self, proc: ExaBGPProcess, running: SpeakerConfig, cfg: SpeakerConfig
    ) -> SpeakerConfig:
        old = {p.address: p for p in running.peers}
        new = {p.address: p for p in cfg.peers}
        same_speaker = (running.local_asn, running.router_id) == (cfg.local_asn, cfg.router_id)
        removed = [a for a in old if a not in new]
        changed = [a for a in old if a in new and (old[a] != new[a] or not same_speaker)]
        log.info(
            "bgp peers changed, reloading exabgp",
            removed=removed,
            changed=changed,
            added=[a for a in new if a not in old],
        )
        for peer in removed:
            if peer in self._rib:
                await self._sync_peer(proc, peer, {})
        if removed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.SYNC_TIMEOUT):
                    while self._sessions.on_wire_to(removed):
                        self._tick.clear()
                        await self._tick.wait()
        for peer in removed + changed:
            # A changed session is re-established: its routes go again once it is up.
            self._rib.pop(peer, None)
            self._local.pop(peer, None)
            self._eor_due.discard(peer)
        # Sessions may come up, and say so, before reload() returns: track the new peers
        # first, or their "up" (our local address, the End-of-RIB due) would be dropped.
        self._sessions.set_peers([*cfg.peers, *(old[a] for a in removed)])
        if not await proc.reload(exaconf.render(cfg, proc.helper()), exaconf.keepalives(cfg)):
            raise ExaBGPError("exabgp refused to reload its configuration")
        self._sessions.set_peers(cfg.peers)
        self._notify()
        return cfg

    async def _sync_peer(self, proc: ExaBGPProcess, peer: str, routes: dict[str, Route]) -> None:
        rib = self._rib.get(peer)
        if rib is None:
            return
        wanted = self._wanted(peer, routes)
        for prefix in sorted(set(rib) - set(wanted)):
            if await proc.command(exaconf.withdraw(peer, prefix)):
                del rib[prefix]
                log.info("bgp withdraw", peer=peer, prefix=prefix)
            else:
                log.error("exabgp refused a withdrawal", peer=peer, prefix=prefix)
        for p, prefix in [k for k in self._refused if k[0] == peer and k[1] not in wanted]:
            del self._refused[(p, prefix)]
        for prefix, (route, next_hop) in wanted.items():
            if rib.get(prefix) != (route, next_hop):
                if await proc.command(exaconf.announce(peer, route, next_hop)):
                    rib[prefix] = (route, next_hop)
                    self._refused.pop((peer, prefix), None)
                    log.info("bgp announce", peer=peer, prefix=prefix)
                else:
                    log.error("exabgp refused an announcement", peer=peer, prefix=prefix)
                    self._refused[(peer, prefix)] = self._refusal(peer, prefix)

    def _refusal(self, address: str, prefix: str) -> Problem:
        peer = next((p for p in self._cfg.peers if p.address == address), None)
        name = peer.name if peer is not None else address
        message = f"{prefix} to peer {name}: ExaBGP refused the announcement"
        adv = self._cfg.advertisement(peer, prefix) if peer is not None else None
        if adv is not None and adv.sources:
            return Problem("BGPAdvertisement", ",".join(adv.sources), message)
        return Problem("BGPPeer", name, message)


def _show_bfd(status: pb.BGPSessionStatus, shown: Negotiated | None) -> None:
    if shown is None:
        status.bfd_state = State.DOWN.label
        return
    status.bfd_state = shown.state.label
    status.bfd_remote_state = shown.remote_state.label
    status.bfd_diagnostic = shown.diag.label
    status.bfd_transmit_ms = shown.tx_us // 1000
    status.bfd_receive_ms = shown.rx_us // 1000
    status.bfd_detect_ms = shown.detect_us // 1000
