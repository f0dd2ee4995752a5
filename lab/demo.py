"""What the lab shows, step by step, on a running Stack:

1. new connections spread over the backends (Maglev) and over the LB nodes (router ECMP);
2. the same for pods on three Kubernetes nodes behind the router: the LB nodes encapsulate
   to the pods' nodes, the pods see the client's own address, and their replies go straight
   back to the client (no reply crosses an LB node); 20 MB each way, checksummed;
3. one LB node fails hard: long-lived connections survive (to backends and to pods), and
   the flows it carried land on the same backends through the other nodes (same Maglev
   table everywhere);
4. a backend is removed from the manifest: only its flows move; the live Maglev table shows
   how few slots changed between the backends that stayed;
5. the failed node comes back, and the backend too: the lab is whole again (for --keep).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from weir.lab import show, traffic
from weir.lab.client import Outcome, Target
from weir.lab.stack import POD_TARGET, TARGET, Stack
from weir.lab.topology import (
    BACKENDS,
    BULK_PORT,
    CLIENTS,
    NODES,
    POD_VIP,
    PODS,
    replies_counted,
)
from weir.nodeagent.maglev import disruption

SPORT_BASE = 20000
POD_SPORT_BASE = 30000
BULK_BYTES = 20_000_000
FAILED_NODE = "lb3"
REMOVED_BACKEND = "b4"


@dataclass(frozen=True)
class Size:
    flows: int  # new connections per burst
    held: int  # long-lived connections
    bulk: int  # bytes each way to the pods


FULL = Size(flows=1200, held=24, bulk=BULK_BYTES)
QUICK = Size(flows=300, held=12, bulk=BULK_BYTES // 4)


@dataclass
class Summary:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    ok: bool = True

    def check(self, what: str, result: str, passed: bool) -> None:
        self.rows.append((what, result, "ok" if passed else "FAIL"))
        self.ok &= passed


def burst(
    stack: Stack, label: str, count: int, target: Target = TARGET, sport_base: int = SPORT_BASE
) -> list[Outcome]:
    """count new connections from c1 with fixed source ports, with a progress bar."""
    bar = show.Progress(label, count)
    results = traffic.burst(
        stack.net.clients["c1"], target, count=count, sport_base=sport_base, concurrency=32,
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


def run(stack: Stack, size: Size, mark: Callable[[str], None] = lambda _: None) -> Summary:
    """The story; mark(step) is called as each step begins (the traffic chart's axis)."""
    summary = Summary()
    held = traffic.Held(stack.net.clients["c2"], TARGET, size.held)
    held_pods = traffic.Held(stack.net.clients["c2"], POD_TARGET, size.held)
    try:
        mark("1")
        first = _spread(stack, size, summary)
        mark("2")
        _pods(stack, size, summary, held_pods)
        mark("3")
        _fail_node(stack, size, summary, held, first, held_pods)
        mark("4")
        _remove_backend(stack, size, summary, held, first)
        mark("5")
        _restore(stack, summary)
    finally:
        held.close()
        held_pods.close()
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


def _pods(stack: Stack, size: Size, summary: Summary, held: traffic.Held) -> None:
    show.step(
        f"2. {size.flows} new HTTP connections to the shop VIP {POD_VIP}: 6 pods on n1..n3, "
        "behind the router, targetPort 8080"
    )
    lb_replies = sum(replies_counted(h, "netdev") for h in stack.net.nodes.values())
    routed = replies_counted(stack.net.router, "ip")
    results = burst(stack, "connections", size.flows, POD_TARGET, POD_SPORT_BASE)
    by_pod = Counter(answered(results).values())
    show.shares("per pod (who answered)", by_pod, list(PODS))
    failed = failures(results, size.flows)
    summary.check("pod connections succeeded", f"{size.flows - failed}/{size.flows}", failed == 0)
    fair = size.flows / len(PODS)
    worst = max(abs(by_pod.get(p, 0) - fair) / fair for p in PODS)
    summary.check("pod shares within ±25%", f"worst {100 * worst:.0f}% off", worst <= 0.25)
    peers = stack.pod_peers()
    own = {CLIENTS["c2"]}
    show.note(f"the pods see their long-lived connections coming from {', '.join(sorted(peers))}")
    summary.check("pods see the client's own address", " ".join(sorted(peers)), peers == own)
    lb_replies = sum(replies_counted(h, "netdev") for h in stack.net.nodes.values()) - lb_replies
    routed = replies_counted(stack.net.router, "ip") - routed
    show.note(f"replies: {routed} routed straight from the workers, {lb_replies} via an LB node")
    summary.check(
        "no reply crossed an LB node", f"{lb_replies} (router: {routed} from workers)",
        lb_replies == 0 and routed > 0,
    )  # fmt: skip
    client = stack.net.clients["c1"]
    for direction in ("upload", "download"):
        t = traffic.bulk(client, direction, POD_VIP, BULK_PORT, size.bulk)
        mb = t.bytes / 1e6
        verdict = "matches" if t.ok else "DIFFERS"
        show.note(f"{direction}: {mb:.0f} MB in {t.seconds:.1f} s, SHA-256 {verdict}")
        summary.check(
            f"{mb:.0f} MB {direction}, MTU 1500", "intact" if t.ok else t.error or "corrupt", t.ok
        )


def _fail_node(
    stack: Stack,
    size: Size,
    summary: Summary,
    held: traffic.Held,
    first: dict[int, str],
    held_pods: traffic.Held,
) -> None:
    show.step(f"3. {FAILED_NODE} fails hard (agent killed, link down)")
    answers = held.ping()
    pod_answers = held_pods.ping()
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
    pods_after = held_pods.ping()
    kept = sum(1 for a, b in zip(pod_answers, pods_after, strict=True) if a == b)
    summary.check(
        f"long-lived pod connections after {FAILED_NODE} failed",
        f"{kept}/{len(pods_after)} same pod",
        kept == len(pods_after),
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
    show.step(f"4. {REMOVED_BACKEND} is removed from the EndpointSlice manifest")
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
    show.step(f"5. {FAILED_NODE} and {REMOVED_BACKEND} come back")
    stack.restore_node(FAILED_NODE)
    stack.set_backends(list(BACKENDS))
    hops = stack.next_hops()
    show.note(f"router: next hops {', '.join(hops)}; every agent acked version {stack.version}")
    summary.check("router back to every LB node", f"{len(hops)} next hops", len(hops) == 3)
