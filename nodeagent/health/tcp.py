"""TCP connect checks on the event loop: the checks' schedule and rise/fall state live in C
(_tcpcheck.TcpChecks, built from _tcpcheck.c), which one loop timer calls at its next wake (at
most once a slot: it ends the checks that ended, then starts those due). Python runs once per
slot and once per change of a backend's state, never once per check: at a thousand checks a
second, that Python was most of the checker's cost (docs/HEALTH.md, "Cost"). The checks run
elsewhere (HTTP, HTTPS) report their results here too, so rise and fall have one home."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from weir.common.logs import RateLimit, get_logger
from weir.nodeagent.health._tcpcheck import TcpChecks
from weir.nodeagent.health.targets import Check

log = get_logger("weir.health")

# Checks start and end on a grid of this many seconds: the loop wakes once for each slot's
# batch, not once per check.
SLOT = 0.02

# A target's state changed: (handle, failing, the last failure's reason).
Changed = Callable[[int, bool, str], None]


class TcpLoop:
    def __init__(self, loop: asyncio.AbstractEventLoop, changed: Changed) -> None:
        self._loop = loop
        self._changed = changed
        self.checks = TcpChecks(slot=SLOT)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._log_limit = RateLimit()

    def add(self, address: tuple[str, int], mark: int, check: Check, first: float) -> int:
        """Check address from loop time first on; returns the target's handle. A new target
        is healthy until `fall` failures."""
        handle = self.checks.add(
            address[0], address[1], mark, check.interval, check.timeout, check.rise,
            check.fall, first,
        )  # fmt: skip
        if first < self._timer_at:
            self._wake_at(first)
        return handle

    def add_reported(self, check: Check) -> int:
        """A target checked elsewhere (HTTP, HTTPS): its results go to report()."""
        return self.checks.add_reported(check.rise, check.fall)

    def report(self, handle: int, reason: str | None) -> None:
        """A result of a target of add_reported (None: it passed)."""
        for change in self.checks.report(handle, reason):
            self._changed(*change)

    def remove(self, handle: int) -> None:
        """Stop checking; a check in flight is dropped and never reported."""
        self.checks.remove(handle)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        try:
            wake, changes = self.checks.tick(self._loop.time())
        except (OSError, MemoryError) as exc:
            # That pass's results are lost (a streak may restart); the checks go on.
            dropped = self._log_limit("tick")
            if dropped is not None:
                log.error("a pass of the TCP checks failed", error=str(exc), suppressed=dropped)
            self._wake_at(self._loop.time() + SLOT)
            return
        self._wake_at(wake)
        for handle, failing, reason in changes:
            self._changed(handle, failing, reason)

    def _wake_at(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, when
        if when != math.inf:
            self._timer = self._loop.call_at(when, self._tick)

    def close(self) -> None:
        """End every check (a RST for those connected) and release every descriptor."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.checks.close()
