"""A packet sees the whole old table or the whole new one, never a mix.

One thread flips a service between two disjoint backend sets (tables of different
sizes, so a torn descriptor, old base with new size or the reverse, would send flows
to slots that neither table predicts) while this thread classifies new flows with
BPF_PROG_TEST_RUN. Every packet must reach exactly the backend the old table or the
new one predicts for it.
"""

from __future__ import annotations

import itertools
import threading
import time

from weir.nodeagent.dataplane import Dataplane

from .support import XDP_TX, packet, predicted_backend, run_xdp
from .test_xdp import FE, NODE_MAC, SEED, flows, maglev, targets

MIN_FLIPS = 100
MAX_SECONDS = 60.0


def test_packets_never_see_a_half_applied_table(dp: Dataplane) -> None:
    dp.set_seed(SEED)
    sets = {"A": targets(1, 4), "B": targets(101, 5)}
    tables = {"A": maglev(sets["A"], 251), "B": maglev(sets["B"], 257)}
    dp.apply_service(FE, sets["A"], tables["A"])
    stop = threading.Event()
    flips = 0
    errors: list[BaseException] = []

    def flipper() -> None:
        nonlocal flips
        try:
            while not stop.is_set():
                for name in ("B", "A"):
                    dp.apply_service(FE, sets[name], tables[name])
                    flips += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    seen: list[str] = []
    bad: list[str] = []
    deadline = time.monotonic() + MAX_SECONDS
    try:
        start = 0
        while (flips < MIN_FLIPS or len(seen) < 50000) and time.monotonic() < deadline:
            for flow in flows(500, start=start):  # every one a new flow: a table lookup
                act, out = run_xdp(dp.xdp_prog_fd, packet(flow, NODE_MAC))
                got = None
                for name in ("A", "B"):
                    want = sets[name][predicted_backend(flow, SEED, tables[name])]
                    if act == XDP_TX and out[:6] == want.mac:
                        got = name
                if got is None:
                    bad.append(f"{flow}: action {act}, MAC {out[:6].hex()}")
                else:
                    seen.append(got)
            start += 500
            if errors:
                break
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert not bad, bad[:5]
    switches = sum(1 for a, b in itertools.pairwise(seen) if a != b)
    assert flips >= MIN_FLIPS, f"only {flips} flips in {MAX_SECONDS} s"
    assert switches >= 30, f"packets saw only {switches} table switches"
