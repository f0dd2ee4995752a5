"""The health decision: which backends the LB nodes' checks hold out. Pure.

Each LB node checks the backends of every frontend with a health check and reports the
frontends it checks and the backends it sees failing (its own rise/fall thresholds applied).
A backend is failing when more than half of the connected LB nodes that check its frontend
see it failing: one LB node that cannot reach a backend (its own link, a one-sided cut) does
not take it out, and every node gets the same decision in the same snapshot version, so the
Maglev tables stay identical. Fail open is reduce's part (controller/core/reduce.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BackendKey = tuple[str, str, int]  # (frontend id, address, port)


@dataclass(frozen=True)
class Failing:
    """One LB node sees one backend failing."""

    node: str
    since_unix: int
    reason: str


@dataclass(frozen=True)
class NodeReport:
    node: str
    checked: frozenset[str]  # frontend ids whose backends the node checks
    failing: Mapping[BackendKey, tuple[int, str]]  # -> (since_unix, reason)


@dataclass(frozen=True)
class Decision:
    failing: Mapping[str, frozenset[tuple[str, int]]]  # frontend id -> backends held out
    seen: Mapping[BackendKey, tuple[Failing, ...]]  # every failing report, by node
    checkers: Mapping[str, int]  # frontend id -> LB nodes that check it


def decide(reports: Iterable[NodeReport]) -> Decision:
    checkers: Counter[str] = Counter()
    seen: dict[BackendKey, list[Failing]] = {}
    for report in reports:
        checkers.update(report.checked)
        for key, (since, reason) in report.failing.items():
            if key[0] in report.checked:  # a report on a frontend it no longer checks is stale
                seen.setdefault(key, []).append(Failing(report.node, since, reason))
    failing: dict[str, set[tuple[str, int]]] = {}
    for (fid, address, port), who in seen.items():
        if 2 * len(who) > checkers[fid]:
            failing.setdefault(fid, set()).add((address, port))
    return Decision(
        failing={fid: frozenset(b) for fid, b in failing.items()},
        seen={k: tuple(sorted(v, key=lambda f: f.node)) for k, v in seen.items()},
        checkers=dict(checkers),
    )
