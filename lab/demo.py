"""What the lab shows, step by step, on a running Stack:

1. new connections spread over the backends (Maglev) and over the LB nodes (router ECMP);
2. one LB node fails hard: long-lived connections survive, and the flows it carried land on
   the same backends through the other nodes (same Maglev table everywhere);
3. a backend is removed from the manifest: only its flows move; the live Maglev table shows
   how few slots changed between the backends that stayed;
4. the failed node comes back, and the backend too: the lab is whole again (for --keep).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from weir.lab import show, traffic
from weir.lab.client import Outcome
from weir.lab.stack import TARGET, Stack
from weir.lab.topology import BACKENDS, NODES
from weir.nodeagent.maglev import disruption

SPORT_BASE = 20000
FAILED_NODE = "lb3"
REMOVED_BACKEND = "b4"


@dataclass(frozen=True)
class Size:
    flows: int  # new connections per burst
    held: int  # long-lived connections


FULL = Size(flows=1200, held=24)
QUICK = Size(flows=300, held=12)


@dataclass
class Summary:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    ok: bool = True

    def check(self, what: str, result: str, passed: bool) -> None:
        self.rows.append((what, result, "ok" if passed else "FAIL"))
        self.ok &= passed


def burst(stack: Stack, label: str, count: int) -> list[Outcome]:
    """count new connections from c1 with fixed source ports, with a progress bar."""
    bar = show.Progress(label, count)
    results = traffic.burst(
        stack.net.clients["c1"], TARGET, count=count, sport_base=SPORT_BASE, concurrency=32,
        progress=lambda _: bar.advance(),
    )  # fmt: skip
    bar.finish()
    return results


def failures(results: list[Outcome], count: int) -> int:
    """Connections of a burst of count that failed or never reported."""
    return sum(1 for r in results if not r.ok) + count - len(results)


def answered(results: list[Outcome]) -> dict[int, str]:
    """source port -> backend of the flows that were answered."""
    return {r.sport: r.backend for r in results if r.ok}


def node_counters(stack: Stack) -> dict[str, int]:
    return {n: stack.weir.new_flows(n) for n in NODES}


def moved_slots(old: list[str], new: list[str]) -> int:
    """Slots that moved between backends both tables hold (Maglev's needless disruption)."""
    old_names, new_names = sorted(set(old)), sorted(set(new))
    old_idx = np.array([old_names.index(a) for a in old])
    new_idx = np.array([new_names.index(b) for b in new])
    return round(disruption(old_idx, old_names, new_idx, new_names) * len(old))


def run(stack: Stack, size: Size) -> Summary:
    summary = Summary()
    held = traffic.Held(stack.net.clients["c2"], TARGET, size.held)
    try:
        first = _spread(stack, size, summary)
        _fail_node(stack, size, summary, held, first)
        _remove_backend(stack, size, summary, held, first)
        _restore(stack, summary)
    finally:
        held.close()
    return summary


def _spread(stack: Stack, size: Size, summary: Summary) -> dict[int, str]:
    """Returns source port -> backend of the burst's flows, to replay them later."""
    show.step(f"1. {size.flows} new HTTP connections from c1 to the VIP")
    before = node_counters(stack)
    results = burst(stack, "connections", size.flows)
    after = node_counters(stack)
    by_node = {n: after[n] - before[n] for n in NODES}
    by_backend = Counter(answered(results).values())
    show.shares("per backend (who answered)", by_backend, list(BACKENDS))
    show.shares("per LB node (new flows in its XDP counters)", by_node, list(NODES))
    failed = failures(results, size.flows)
    summary.check("connections succeeded", f"{size.flows - failed}/{size.flows}", failed == 0)
    fair = size.flows / len(BACKENDS)
    worst = max(abs(by_backend.get(b, 0) - fair) / fair for b in BACKENDS)
    summary.check("backend shares within ±25%", f"worst {100 * worst:.0f}% off", worst <= 0.25)
    summary.check(
        "every LB node took flows", " ".join(f"{n}:{c}" for n, c in by_node.items()),
        all(by_node.values()),
    )  # fmt: skip
    return answered(results)


def _fail_node(
    stack: Stack, size: Size, summary: Summary, held: traffic.Held, first: dict[int, str]
) -> None:
    show.step(f"2. {FAILED_NODE} fails hard (agent killed, link down)")
    answers = held.ping()
    on_failed = stack.tracked_ports(FAILED_NODE)
    through = sum(1 for p in held.sports if p in on_failed)
    moved_flows = {p: b for p, b in first.items() if p in on_failed}
    show.note(f"{through} of {len(held.sports)} long-lived connections run through {FAILED_NODE}")
    took = stack.fail_node(FAILED_NODE)
    how = "BGP hold timer, 3 s" if stack.routing == "bgp" else "static route reconfigured"
    show.note(f"router converged in {took:.1f} s ({how}): next hops {', '.join(stack.next_hops())}")
    after = held.ping()
    survived = sum(1 for a, b in zip(answers, after, strict=True) if a == b)
    summary.check(
        f"long-lived connections after {FAILED_NODE} failed",
        f"{survived}/{len(after)} same backend ({through} were on {FAILED_NODE})",
        survived == len(after),
    )
    results = burst(stack, "same flows again", size.flows)
    replay = answered(results)
    kept = sum(1 for p, b in moved_flows.items() if replay.get(p) == b)
    show.note(f"{len(moved_flows)} flows that {FAILED_NODE} had carried now cross lb1/lb2")
    summary.check(
        f"{FAILED_NODE}'s flows, replayed via the others",
        f"{kept}/{len(moved_flows)} same backend",
        kept == len(moved_flows) and len(moved_flows) > 0,
    )
    failed = failures(results, size.flows)
    summary.check(
        "connections after the failure", f"{size.flows - failed}/{size.flows}", failed == 0
    )


def _remove_backend(
    stack: Stack, size: Size, summary: Summary, held: traffic.Held, first: dict[int, str]
) -> None:
    show.step(f"3. {REMOVED_BACKEND} is removed from the EndpointSlice manifest")
    answers = held.ping()
    old_table = stack.maglev_table("lb1")
    rest = [b for b in BACKENDS if b != REMOVED_BACKEND]
    version = stack.set_backends(rest)
    show.note(f"every agent acked version {version}")
    changed = moved_slots(old_table, stack.maglev_table("lb1"))
    share = changed / len(old_table)
    summary.check(
        "Maglev slots moved between staying backends",
        f"{changed}/{len(old_table)} ({100 * share:.2f}%; only {REMOVED_BACKEND}'s had to)",
        share < 0.02,
    )
    results = burst(stack, "same flows again", size.flows)
    moved: Counter[str] = Counter()
    for sport, backend in answered(results).items():
        before = first.get(sport)
        if before and before != backend:
            moved[before] += 1
    on_removed = sum(1 for b in first.values() if b == REMOVED_BACKEND)
    others = sum(n for b, n in moved.items() if b != REMOVED_BACKEND)
    show.note(
        f"flows that moved: {moved[REMOVED_BACKEND]} of {on_removed} on {REMOVED_BACKEND}, "
        f"{others} of {size.flows - on_removed} on the others"
    )
    summary.check(
        "flows moved (tracked flows stay put)",
        f"{sum(moved.values())}/{size.flows} (ideal {on_removed}: {REMOVED_BACKEND}'s)",
        others == 0 and moved[REMOVED_BACKEND] == on_removed,
    )
    after = held.ping()
    kept = sum(1 for a, b in zip(answers, after, strict=True) if a == b and a != REMOVED_BACKEND)
    staying = sum(1 for a in answers if a in rest)
    summary.check(
        "long-lived connections on staying backends", f"{kept}/{staying} same backend",
        kept == staying,
    )  # fmt: skip
    reached = [r for r in results if r.backend == REMOVED_BACKEND]
    summary.check(f"new flows reaching {REMOVED_BACKEND}", str(len(reached)), not reached)


def _restore(stack: Stack, summary: Summary) -> None:
    show.step(f"4. {FAILED_NODE} and {REMOVED_BACKEND} come back")
    stack.restore_node(FAILED_NODE)
    stack.set_backends(list(BACKENDS))
    hops = stack.next_hops()
    show.note(f"router: next hops {', '.join(hops)}; every agent acked version {stack.version}")
    summary.check("router back to every LB node", f"{len(hops)} next hops", len(hops) == 3)
