"""The leader's BGPPeer status writer: each node's session with the peer, from the agents'
NodeStatus, into the BGPPeer status subresource.

    status:
      established: 2            # nodes whose session with this peer is established
      nodes:                    # sorted by node
        - node: lb-1
          state: established    # idle, connect, active, opensent, openconfirm, established
          establishedSince: "2026-01-01T10:00:00Z"   # only while established
          routesSent: 3
          draining: false

Writes go out only when this content changes, and at most once per `min_interval` seconds
(session flaps on many nodes coalesce into one write per peer). establishedSince is
derived from the reported uptime (the earliest start seen for the session, as reports lag),
so the uptime going by is not a change.

The status covers the agents whose streams reach this replica: with several replicas, an
agent connected to a standby is missing here (as it is from the leader's `weirctl bgp peers`)
until its stream lands on the leader.

A new leader starts from nothing it wrote and writes every peer once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from common.logs import get_logger
from common.pb import pb
from controller.kubeapi import BGP_PEERS, ApiError, KubeAPI
from controller.plane import NodePlane
from controller.state import ClusterState

log = get_logger("weir.peerstatus")


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PeerStatusWriter:
    def __init__(
        self,
        api: KubeAPI,
        plane: NodePlane,
        state: ClusterState,
        *,
        min_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.plane, self.state = api, plane, state
        self.min_interval = min_interval
        self._clock = clock
        # (peer, node) -> (established at, last reported uptime): an uptime going down is
        # a new session.
        self._since: dict[tuple[str, str], tuple[float, int]] = {}
        self._written: dict[str, dict[str, Any]] = {}  # peer -> status written

    async def run(self) -> None:
        """Until cancelled (on the leader)."""
        log.info("BGPPeer status writer running")
        while True:
            await self.plane.wait_for(lambda: self.desired() != self._written)
            await self.write_changed()
            await asyncio.sleep(self.min_interval)

    def desired(self) -> dict[str, dict[str, Any]]:
        """The status each BGPPeer should carry now."""
        now = self._clock()
        peers = self.state.inputs().bgp_peers
        nodes: dict[str, list[dict[str, Any]]] = {name: [] for name in peers}
        since: dict[tuple[str, str], tuple[float, int]] = {}
        for agent in self.plane.list_agents().agents:
            if not agent.connected:
                continue
            for s in agent.status.bgp_sessions:
                if s.peer in nodes:
                    nodes[s.peer].append(self._entry(agent, s, now, since))
        self._since = since
        return {
            peer: {
                "established": sum(1 for e in entries if e["state"] == "established"),
                "nodes": sorted(entries, key=lambda e: e["node"]),
            }
            for peer, entries in nodes.items()
        }

    def _entry(
        self,
        agent: pb.AgentInfo,
        s: pb.BGPSessionStatus,
        now: float,
        since: dict[tuple[str, str], tuple[float, int]],
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "node": agent.node,
            "state": s.state or "idle",
            "routesSent": s.routes_sent,
            "draining": agent.status.draining,
        }
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

    async def write_changed(self) -> bool:
        """Write the peers whose status changed; False when some write failed."""
        ok = True
        for peer, status in self.desired().items():
            if self._written.get(peer) == status:
                continue
            if await self._write(peer, status):
                self._written[peer] = status
            else:
                ok = False
        for gone in set(self._written) - set(self.state.inputs().bgp_peers):
            del self._written[gone]
        return ok

    async def _write(self, peer: str, status: Mapping[str, Any]) -> bool:
        try:
            await self.api.patch(BGP_PEERS, "", peer, {"status": status}, subresource="status")
        except ApiError as e:
            if e.status == 404:
                return True  # deleted meanwhile: nothing to write
            log.warning("BGPPeer status write failed", peer=peer, error=str(e))
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("BGPPeer status write failed", peer=peer, error=repr(e))
            return False
        log.debug("BGPPeer status written", peer=peer, established=status["established"])
        return True
