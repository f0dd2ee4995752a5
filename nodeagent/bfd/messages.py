"""What the agent and its BFD daemon say to each other: one JSON object per line.

agent -> daemon (stdin):
    {"sessions": [{"peer": "10.0.0.1", "min_tx_us": 300000, "min_rx_us": 300000,
                   "multiplier": 3}, ...]}      the whole set: others are removed
    {"stop": true}                              AdminDown to every peer, then exit
daemon -> agent (stdout), whenever a session's state or intervals change:
    {"peer": "10.0.0.1", "state": "up", "remote_state": "up", "diag": "none",
     "tx_us": 300000, "rx_us": 300000, "detect_us": 900000}
    {"error": "..."}                            the daemon cannot go on (it exits)
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from weir.nodeagent.bfd.packet import Diag, State
from weir.nodeagent.bfd.session import Negotiated, Settings


def sessions_line(sessions: Mapping[str, Settings]) -> bytes:
    items = [
        {
            "peer": peer,
            "min_tx_us": s.min_tx_us,
            "min_rx_us": s.min_rx_us,
            "multiplier": s.multiplier,
        }
        for peer, s in sorted(sessions.items())
    ]
    return json.dumps({"sessions": items}).encode() + b"\n"


STOP_LINE = b'{"stop": true}\n'


def parse_command(line: bytes) -> dict[str, Settings] | None:
    """The sessions asked for, or None for stop; ValueError when malformed."""
    obj = json.loads(line)
    if obj.get("stop"):
        return None
    return {
        str(item["peer"]): Settings(
            int(item["min_tx_us"]), int(item["min_rx_us"]), int(item["multiplier"])
        )
        for item in obj["sessions"]
    }


def event_line(peer: str, n: Negotiated) -> bytes:
    return (
        json.dumps(
            {
                "peer": peer,
                "state": n.state.label,
                "remote_state": n.remote_state.label,
                "diag": n.diag.label,
                "tx_us": n.tx_us,
                "rx_us": n.rx_us,
                "detect_us": n.detect_us,
            }
        ).encode()
        + b"\n"
    )


def error_line(message: str) -> bytes:
    return json.dumps({"error": message}).encode() + b"\n"


_STATES = {s.label: s for s in State}
_DIAGS = {d.label: d for d in Diag}


def parse_event(line: bytes) -> tuple[str, Negotiated]:
    """(peer, what its session shows); ValueError (or KeyError) when malformed, and
    RuntimeError carrying the daemon's own error."""
    obj = json.loads(line)
    if "error" in obj:
        raise RuntimeError(str(obj["error"]))
    return str(obj["peer"]), Negotiated(
        state=_STATES[obj["state"]],
        remote_state=_STATES[obj["remote_state"]],
        diag=_DIAGS[obj["diag"]],
        tx_us=int(obj["tx_us"]),
        rx_us=int(obj["rx_us"]),
        detect_us=int(obj["detect_us"]),
    )
