"""An LB node's health report as published on its Node, for every controller replica. Pure.

With the Kubernetes source each replica serves only the agents connected to it, yet every
replica must decide from the same reports, or one LB node alone on a replica would make a
majority of one there (docs/HEALTH.md). So each replica writes the report of each of its
connected LB agents into the annotation `weir.dev/health-report` of that agent's Node, and
every replica decides from those annotations, as its Node watch sees them:

    {"v": 1, "replica": "weir-controller-7d9-x2k4", "renewed": 1765000000,
     "checked": ["192.0.2.10:80/TCP"],
     "failing": [["192.0.2.10:80/TCP", "10.66.0.21", 80, 1764999990, "refused"]]}

`renewed` (unix seconds, the writer's clock) moves at every renewal, so every renewal changes
the text. A reader counts a report for `ttl` seconds after it last saw the text change, by its
own clock, never comparing `renewed` with it: replicas' clocks need not agree (as client-go's
leader election, which times a Lease from when it observed the record change). So the report
of a node whose replica died stops counting `ttl` after its last renewal, on every replica,
and a replica that starts counts what it finds for `ttl` at most. While the reader cannot
see the Nodes (the API server out of reach), no renewal can reach it: its reports do not age
then (pause, resume), so an outage keeps the decision as it was rather than expiring every
report and putting every backend back in.
A report too big for an annotation leaves out whole frontends (checked and failing alike:
the node does not vote on them rather than voting "healthy"), and says how many in
`truncated`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from weir.controller.core.health import NodeReport
from weir.controller.core.parsing import ParseError

ANN_HEALTH_REPORT = "weir.dev/health-report"
VERSION = 1
MAX_BYTES = 64 * 1024  # what a writer puts in; the API server allows 256 KiB of annotations
MAX_READ_BYTES = 256 * 1024  # more is no report of ours
MAX_ENTRIES = 10_000  # frontends plus failing backends, read
MAX_REASON = 100  # characters of a failure's reason kept


@dataclass(frozen=True)
class Published:
    """One node's report as read from its Node."""

    report: NodeReport
    replica: str
    renewed: float
    truncated: int  # frontends the writer left out (too big)


def encode(report: NodeReport, replica: str, renewed: float, max_bytes: int = MAX_BYTES) -> str:
    """The annotation's text; whole frontends left out (the last ones by id) when too big."""
    frontends = sorted(report.checked)
    failing: dict[str, list[list[Any]]] = {}
    for (fid, address, port), (since, reason) in sorted(report.failing.items()):
        if fid in report.checked:
            failing.setdefault(fid, []).append([fid, address, port, since, reason[:MAX_REASON]])
    kept = len(frontends)
    while True:
        doc: dict[str, Any] = {
            "v": VERSION,
            "replica": replica,
            "renewed": int(renewed),
            "checked": frontends[:kept],
            "failing": [e for fid in frontends[:kept] for e in failing.get(fid, ())],
        }
        if kept < len(frontends):
            doc["truncated"] = len(frontends) - kept
        text = json.dumps(doc, separators=(",", ":"))
        if len(text.encode()) <= max_bytes or kept == 0:
            return text
        # Shrink in proportion, at least one frontend at a time.
        kept = min(kept - 1, kept * max_bytes // len(text.encode()))


def decode(node: str, text: str) -> Published:
    """The report in a Node's annotation; ParseError (with why) for anything else."""
    if len(text) > MAX_READ_BYTES:
        raise ParseError(f"{len(text)} characters, more than {MAX_READ_BYTES}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ParseError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ParseError("not a JSON object")
    if doc.get("v") != VERSION:
        raise ParseError(f"version {doc.get('v')!r}, not {VERSION}")
    replica, renewed = doc.get("replica"), doc.get("renewed")
    if not isinstance(replica, str):
        raise ParseError("replica: not a string")
    if not isinstance(renewed, int) or isinstance(renewed, bool):
        raise ParseError("renewed: not an integer")
    truncated = doc.get("truncated", 0)
    if not _is_int(truncated) or truncated < 0:
        raise ParseError("truncated: not a count")
    checked, failing = doc.get("checked"), doc.get("failing")
    if not isinstance(checked, list) or not isinstance(failing, list):
        raise ParseError("checked and failing must be lists")
    if len(checked) + len(failing) > MAX_ENTRIES:
        raise ParseError(f"more than {MAX_ENTRIES} entries")
    if not all(isinstance(f, str) for f in checked):
        raise ParseError("checked: not a list of frontend ids")
    return Published(
        report=NodeReport(node=node, checked=frozenset(checked), failing=_failing(failing)),
        replica=replica,
        renewed=float(renewed),
        truncated=truncated,
    )


def _failing(entries: Iterable[Any]) -> dict[tuple[str, str, int], tuple[int, str]]:
    out: dict[tuple[str, str, int], tuple[int, str]] = {}
    for i, e in enumerate(entries):
        if not (
            isinstance(e, list)
            and len(e) == 5
            and isinstance(e[0], str)
            and isinstance(e[1], str)
            and _is_int(e[2])
            and _is_int(e[3])
            and isinstance(e[4], str)
        ):
            raise ParseError(f"failing[{i}]: not [frontend, address, port, since, reason]")
        out[(e[0], e[1], e[2])] = (e[3], e[4][:MAX_REASON])
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class _Seen:
    text: str
    at: float  # the reader's clock when this text first appeared
    parsed: Published | ParseError


class PublishedReports:
    """The reports on the Nodes, parsed once per text; fresh() gives those that count now."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}
        self._paused_at: float | None = None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self, now: float) -> None:
        """The reader lost sight of the Nodes at `now`: the reports stop ageing."""
        if self._paused_at is None:
            self._paused_at = now

    def resume(self, now: float) -> None:
        """The reader sees the Nodes again: the reports age on from where they stopped."""
        if self._paused_at is None:
            return
        gap, paused_at = now - self._paused_at, self._paused_at
        self._paused_at = None
        self._seen = {
            n: replace(s, at=s.at + gap) if s.at <= paused_at else s for n, s in self._seen.items()
        }

    def update(self, texts: Mapping[str, str], now: float) -> dict[str, str]:
        """Take the annotations now on the Nodes (node -> text), seen at `now` (the reader's
        clock); returns node -> why, for each report that did not parse (ignored)."""
        seen: dict[str, _Seen] = {}
        for node, text in texts.items():
            old = self._seen.get(node)
            if old is not None and old.text == text:
                seen[node] = old
                continue
            try:
                parsed: Published | ParseError = decode(node, text)
            except ParseError as e:
                parsed = e
            seen[node] = _Seen(text, now, parsed)
        self._seen = seen
        return {n: str(s.parsed) for n, s in seen.items() if isinstance(s.parsed, ParseError)}

    def fresh(self, now: float, ttl: float) -> tuple[list[NodeReport], float | None]:
        """The reports whose text changed within ttl seconds of now (the reader's clock; the
        moment of the pause while paused), and when the first of them expires (None: none
        to expire, or paused)."""
        if self._paused_at is not None:
            now = self._paused_at
        reports: list[NodeReport] = []
        expiry: float | None = None
        for s in self._seen.values():
            if isinstance(s.parsed, Published) and now - s.at <= ttl:
                reports.append(s.parsed.report)
                ends = s.at + ttl
                expiry = ends if expiry is None else min(expiry, ends)
        return reports, (None if self._paused_at is not None else expiry)
