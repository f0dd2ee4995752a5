"""What ExaBGP writes to its API helper, parsed into typed messages.

With `encoder json` and `api { neighbor-changes; fsm; send { parsed; update; } }` ExaBGP 5
writes one line per message: JSON objects for neighbor events and for each UPDATE it
sends, e.g.

    {"exabgp": "5.0.0", ..., "type": "fsm", "neighbor": {"address": {"local": "10.0.0.2",
     "peer": "10.0.0.1"}, ..., "state": "OPENCONFIRM"}}
    {..., "type": "state", "neighbor": {..., "state": "down", "reason": "peer reset"}}
    {..., "type": "update", "neighbor": {..., "direction": "send", "message": {"update": {
     "attribute": {...}, "announce": {"ipv4 unicast": {"10.0.0.2": [{"nlri": "192.0.2.10/32"}]}},
     "withdraw": {"ipv4 unicast": [{"nlri": "192.0.2.11/32"}]}}}}}
    {..., "type": "update", "neighbor": {..., "direction": "send", "message": {"eor": {...}}}}

and, because `exabgp.api.ack` is on, "done" or "error" after each command it was sent
(plus free text for `show ...` commands, which the speaker does not use).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Literal

FSM_STATES = frozenset({"idle", "active", "connect", "opensent", "openconfirm", "established"})


@dataclass(frozen=True)
class NeighborEvent:
    peer: str  # the peer's address
    kind: Literal["fsm", "state"]
    # fsm: one of FSM_STATES; state: "connected", "up" or "down"
    state: str
    reason: str = ""
    local: str = ""  # our address on the session, when ExaBGP knows it ("up" does)


@dataclass(frozen=True)
class SentUpdate:
    """An UPDATE ExaBGP put on the wire to a peer (or its End-of-RIB marker)."""

    peer: str
    announced: tuple[str, ...] = ()
    withdrawn: tuple[str, ...] = ()
    eor: bool = False


@dataclass(frozen=True)
class Answer:
    ok: bool


@dataclass(frozen=True)
class Other:
    """Anything else: a JSON message of another type, text, or a line that did not parse."""

    text: str


Message = NeighborEvent | SentUpdate | Answer | Other


def parse_line(line: str) -> Message:
    line = line.strip()
    if line in ("done", "error"):
        return Answer(ok=line == "done")
    if not line.startswith("{"):
        return Other(line)
    try:
        obj = json.loads(line)
        kind = obj.get("type")
        neighbor = obj.get("neighbor") or {}
        peer = str(ipaddress.ip_address(neighbor["address"]["peer"]))
        state = str(neighbor.get("state", "")).lower()
    except (ValueError, KeyError, TypeError, AttributeError):
        return Other(line)
    if kind == "update" and neighbor.get("direction") == "send":
        return _sent_update(peer, neighbor.get("message") or {}, line)
    if kind == "fsm" and state in FSM_STATES:
        return NeighborEvent(peer, "fsm", state)
    if kind == "state":
        try:
            local = str(ipaddress.ip_address(neighbor["address"].get("local", "")))
        except ValueError:
            local = ""  # "None" before the connection exists
        return NeighborEvent(peer, "state", state, str(neighbor.get("reason", "")), local)
    return Other(line)


def _sent_update(peer: str, message: dict, line: str) -> Message:
    if "eor" in message:
        return SentUpdate(peer, eor=True)
    try:
        update = message["update"]
        announced = [
            n["nlri"]
            for by_nexthop in update.get("announce", {}).values()
            for nlris in by_nexthop.values()
            for n in nlris
        ]
        withdrawn = [n["nlri"] for nlris in update.get("withdraw", {}).values() for n in nlris]
    except (KeyError, TypeError, AttributeError):
        return Other(line)
    return SentUpdate(peer, tuple(announced), tuple(withdrawn))
