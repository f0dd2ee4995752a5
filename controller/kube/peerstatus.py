"""BGPPeer status: each node's session with the peer, from the agents' NodeStatus, in the
BGPPeer status subresource.

    status:
      established: 2            # nodes whose session with this peer is established
      nodes:                    # keyed by node
        lb-1:
          state: established    # idle, connect, active, opensent, openconfirm, established
          establishedSince: "2026-01-01T10:00:00Z"   # only while established
          routesSent: 3
          draining: false
          bfd:                  # only with BFD: states and intervals in use (ms)
            state: up           # down, init, up, admin_down
            remoteState: up
            diagnostic: none
            transmitInterval: 100
            receiveInterval: 100
            detectTime: 300
          errors: []            # what the node cannot announce to this peer
          reporter: weir-controller-7d9-x2k4   # the replica the node's agent is connected to
          observedTime: "2026-01-01T10:05:00Z"

Agents connect to any replica, so every replica (not only the leader) writes the entries of
the agents connected to it: a JSON merge patch on a map keyed by node touches only those
keys, and carries the resourceVersion listed just before, so `established` (counted over
the whole map) stays true and a replica removes an entry only if it still reports it (an
agent that moved to another replica keeps the entry that replica wrote). A 409 is retried
from a fresh list at once (a few times, with a short random pause), then on the next pass.
Reading uses list, which the controller may already do (no `get`).

Writes go out when a replica's entries change, at most once per `min_interval` seconds
(session flaps on many nodes coalesce into one write per peer), and every `refresh` seconds
to renew observedTime. The leader removes entries of other replicas not renewed for
3 x refresh (their replica is gone): an entry's age is told by the leader's clock from when
its sweeps first saw that observedTime, never by comparing observedTime with it, so the
replicas' clocks need not agree (a new leader waits 3 x refresh before removing anything).
establishedSince is derived from the reported uptime (the earliest start seen for the
session, as reports lag), so the uptime going by is not a change.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import BGP_PEERS, KubeAPI, WriteFailure, write
from weir.controller.kube.statuswrite import due_and_listed, list_by_name, retried
from weir.controller.plane.servicer import NodePlane

log = get_logger("weir.peerstatus")

Entries = dict[str, dict[str, Any]]  # node -> entry (without reporter and observedTime)
STAMP = "%Y-%m-%dT%H:%M:%SZ"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(STAMP)


def _nodes(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The node map of a BGPPeer's status (an older list form counts as empty)."""
    nodes = (obj.get("status") or {}).get("nodes")
    return nodes if isinstance(nodes, dict) else {}


def _established(nodes: Mapping[str, Any]) -> int:
    return sum(1 for e in nodes.values() if isinstance(e, dict) and e.get("state") == "established")


class PeerStatusWriter:
    def __init__(
        self,
        api: KubeAPI,
        plane: NodePlane,
        state: ClusterState,
        *,
        reporter: str,
        refresh: float = 30.0,
        min_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.plane, self.state = api, plane, state
        self.reporter = reporter
        self.refresh, self.ttl = refresh, 3 * refresh
        self.min_interval = min_interval
        self.quick_retries = 3  # then the next pass, min_interval later
        self._clock = clock
        # (peer, node) -> (established at, last reported uptime): an uptime going down is
        # a new session.
        self._since: dict[tuple[str, str], tuple[float, int]] = {}
        self._written: dict[str, Entries] = {}  # peer -> this replica's entries written
        # (peer, node) -> (its observedTime, when a sweep first saw that value): the sweep
        # times entries by its own clock only.
        self._swept: dict[tuple[str, str], tuple[Any, float]] = {}

    async def run(self) -> None:
        """Write this replica's entries, until cancelled (on every replica)."""
        log.info("BGPPeer status writer running", reporter=self.reporter)
        loop = asyncio.get_running_loop()
        renew_at = loop.time()
        while True:
            try:
                async with asyncio.timeout_at(renew_at):
                    await self.plane.wait_for(lambda: self._changed(self.desired()))
            except TimeoutError:
                pass
            renew = loop.time() >= renew_at
            # Mostly a 409: another replica wrote the same BGPPeer since the list.
            write = functools.partial(self.write_changed, renew=renew)
            written = await retried(write, self.quick_retries)
            if written and renew:
                renew_at = loop.time() + self.refresh
            await asyncio.sleep(self.min_interval)

    async def collect_garbage(self) -> None:
        """Remove the entries of gone replicas, until cancelled (on the leader)."""
        while True:
            await self.sweep()
            await asyncio.sleep(self.refresh)

    def _changed(self, desired: Mapping[str, Entries]) -> bool:
        return any(self._written.get(peer, {}) != entries for peer, entries in desired.items())

    def desired(self) -> dict[str, Entries]:
        """This replica's entries for each BGPPeer now (its connected agents)."""
        now = self._clock()
        nodes: dict[str, Entries] = {name: {} for name in self.state.inputs().bgp_peers}
        since: dict[tuple[str, str], tuple[float, int]] = {}
        for agent in self.plane.list_agents().agents:
            if not agent.connected:
                continue
            for s in agent.status.bgp_sessions:
                if s.peer in nodes:
                    nodes[s.peer][agent.node] = self._entry(agent, s, now, since)
        self._since = since
        return nodes

    def _entry(
        self,
        agent: pb.AgentInfo,
        s: pb.BGPSessionStatus,
        now: float,
        since: dict[tuple[str, str], tuple[float, int]],
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "state": s.state or "idle",
            "routesSent": s.routes_sent,
            "draining": agent.status.draining,
        }
        if s.bfd_state:
            entry["bfd"] = {
                "state": s.bfd_state,
                "remoteState": s.bfd_remote_state,
                "diagnostic": s.bfd_diagnostic,
                "transmitInterval": s.bfd_transmit_ms,
                "receiveInterval": s.bfd_receive_ms,
                "detectTime": s.bfd_detect_ms,
            }
        errors = [
            e.message
            for e in agent.status.bgp_errors
            if (e.kind, e.name) == ("BGPPeer", s.peer) or f"to peer {s.peer}:" in e.message
        ]
        if errors:
            entry["errors"] = errors
        if s.state == "established":
            key = (s.peer, agent.node)
            start = now - s.uptime_seconds
            kept = self._since.get(key)
            if kept is not None and s.uptime_seconds >= kept[1]:
                # The same session: the reported uptime only lags (statuses come every few
                # seconds), so the earliest start seen is the closest to the truth.
                start = min(start, kept[0])
            since[key] = (start, s.uptime_seconds)
            entry["establishedSince"] = _stamp(start)
        return entry

    async def write_changed(self, *, renew: bool = False) -> bool:
        """Write the peers whose entries here changed (every peer when renewing); False when
        some write failed (or lost a race: the next pass retries from a fresh list)."""
        desired = self.desired()
        found = await due_and_listed(self.api, BGP_PEERS, desired, self._written, {}, every=renew)
        if found is None:
            return False
        todo, peers = found
        ok = True
        observed = _stamp(self._clock())
        for peer in todo:
            obj = peers.get(peer)
            if obj is None:  # deleted meanwhile: nothing to write
                self._written[peer] = desired[peer]
                continue
            mine: dict[str, dict[str, Any] | None] = {
                node: {**e, "reporter": self.reporter, "observedTime": observed}
                for node, e in desired[peer].items()
            }
            # This replica's entries for agents no longer here; not another replica's.
            mine.update(
                (node, None)
                for node, e in _nodes(obj).items()
                if node not in mine and isinstance(e, dict) and e.get("reporter") == self.reporter
            )
            if not mine or await self._patch(obj, mine):
                self._written[peer] = desired[peer]
            else:
                ok = False
        return ok

    async def sweep(self) -> bool:
        """Remove other replicas' entries whose observedTime has not changed for the TTL
        (by this replica's sweeps), and set `established` where it is missing or off; False
        when some write failed."""
        peers = await list_by_name(self.api, BGP_PEERS)
        if peers is None:
            return False
        ok = True
        now = self._clock()
        swept: dict[tuple[str, str], tuple[Any, float]] = {}
        for peer, obj in peers.items():
            stale: dict[str, Any] = {}
            for node, e in _nodes(obj).items():
                if not isinstance(e, dict):
                    stale[node] = None
                    continue
                observed = e.get("observedTime")
                seen = self._swept.get((peer, node))
                since = seen[1] if seen is not None and seen[0] == observed else now
                swept[(peer, node)] = (observed, since)
                if e.get("reporter") != self.reporter and now - since > self.ttl:
                    stale[node] = None
            kept = {n: e for n, e in _nodes(obj).items() if n not in stale}
            if stale or (obj.get("status") or {}).get("established") != _established(kept):
                if stale:
                    log.info(
                        "removing stale BGPPeer status entries",
                        peer=obj["metadata"]["name"],
                        nodes=sorted(stale),
                    )
                ok = await self._patch(obj, stale) and ok
        self._swept = swept
        return ok

    async def _patch(self, obj: Mapping[str, Any], nodes: Mapping[str, Any]) -> bool:
        """Merge nodes (None removes) into obj's status, if obj is still as listed."""
        peer = obj["metadata"]["name"]
        merged = {n: e for n, e in {**_nodes(obj), **nodes}.items() if e is not None}
        patch = {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "status": {"established": _established(merged), "nodes": nodes},
        }
        if not isinstance((obj.get("status") or {}).get("nodes"), dict):
            patch["status"]["nodes"] = merged  # replaces the older list form whole
        done = await write(
            self.api.patch(BGP_PEERS, "", peer, patch, subresource="status"), f"BGPPeer {peer}"
        )
        if done is WriteFailure.GONE:
            return True  # deleted meanwhile: nothing to write
        if isinstance(done, WriteFailure):
            return False
        log.debug("BGPPeer status written", peer=peer, established=patch["status"]["established"])
        return True
