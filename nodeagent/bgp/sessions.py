"""Session state per configured peer, kept from what ExaBGP reports: its FSM and neighbor
events, and every UPDATE it sends (so "routes sent" is what the peer was actually told
on the current session, not what we asked for)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from weir.common.pb import pb
from weir.nodeagent.bgp.config import Peer
from weir.nodeagent.bgp.events import NeighborEvent, SentUpdate


@dataclass
class _Session:
    name: str
    state: str = "idle"
    since: float | None = None  # monotonic time the session became established
    sent: set[str] = field(default_factory=set)  # prefixes announced on this session


class SessionTable:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[str, _Session] = {}  # by peer address

    def set_peers(self, peers: Sequence[Peer]) -> None:
        """Track exactly these peers; a peer that stays keeps its state."""
        old = self._sessions
        self._sessions = {p.address: old.get(p.address) or _Session(p.name) for p in peers}
        for p in peers:
            self._sessions[p.address].name = p.name

    def apply(self, event: NeighborEvent) -> bool:
        """Update from one event; True when the peer's state changed."""
        session = self._sessions.get(event.peer)
        if session is None:
            return False
        if event.kind == "fsm":
            state = event.state
        elif event.state == "up":
            state = "established"
        elif event.state == "down":
            state = "idle"
        else:
            return False  # "connected": the fsm events say more
        if state == session.state:
            return False
        session.state = state
        session.since = self._clock() if state == "established" else None
        session.sent.clear()  # a new session starts empty; a closed one carries nothing
        return True

    def apply_update(self, update: SentUpdate) -> bool:
        session = self._sessions.get(update.peer)
        if session is None or update.eor:
            return False
        before = set(session.sent)
        session.sent.difference_update(update.withdrawn)
        session.sent.update(update.announced)
        return session.sent != before

    def reset(self) -> bool:
        """ExaBGP is gone: every session is down. True when anything changed."""
        changed = any(s.state != "idle" for s in self._sessions.values())
        for s in self._sessions.values():
            s.state, s.since = "idle", None
            s.sent.clear()
        return changed

    def established(self, peer: str) -> bool:
        session = self._sessions.get(peer)
        return session is not None and session.state == "established"

    def tracks(self, peer: str) -> bool:
        return peer in self._sessions

    def on_wire_to(self, peers: Sequence[str]) -> set[str]:
        return {p for a in peers if (s := self._sessions.get(a)) for p in s.sent}

    def on_wire(self) -> set[str]:
        """Prefixes announced on at least one session now."""
        return {p for s in self._sessions.values() for p in s.sent}

    def status(self) -> list[pb.BGPSessionStatus]:
        """One entry per peer, sorted by peer name."""
        now = self._clock()
        out = [
            pb.BGPSessionStatus(
                peer=s.name,
                address=address,
                state=s.state,
                uptime_seconds=int(now - s.since) if s.since is not None else 0,
                routes_sent=len(s.sent),
            )
            for address, s in self._sessions.items()
        ]
        return sorted(out, key=lambda st: st.peer)
