"""Checks, every `interval` seconds, that a role's programs are still attached to the
uplink (nodeagent.attachment), and tells the role whenever the answer changes.

- Ours is attached: the data plane forwards. After a problem this is reported only when a
  check finds ours attached again, one interval after it was put back: a program that
  keeps being taken off does not make the routes come and go at every check.
- Nothing is attached where ours belongs: ours is attached again (self-heal) and the
  problem is reported (the load-balancer role withdraws its routes until the next check
  confirms the program is back).
- Another program is attached: it is left in place and the problem reported for as long
  as it stays.
A check that fails for another reason (a bug, libbpf refusing) changes nothing: it is
logged, and the next one tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from weir.common.logs import get_logger
from weir.nodeagent.attachment import Probe

log = get_logger("weir.agent")

Report = Callable[[str], Awaitable[None]]  # the problem, "" when the data plane forwards


class ForwardingWatch:
    def __init__(self, probe: Probe, report: Report, *, role: str, interval: float = 1.0) -> None:
        self._probe = probe
        self._report = report
        self._role = role
        self._interval = interval
        self.problem = ""  # as last reported

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("cannot check the data plane's programs", role=self._role)
            await asyncio.sleep(self._interval)

    async def check(self) -> str:
        """One check; returns the problem reported now ("": forwarding)."""
        found = await asyncio.to_thread(self._probe.check)
        problem, reattached = found.problem, False
        if found.missing:
            try:
                await asyncio.to_thread(self._probe.reattach)
                reattached = True
            except Exception as exc:  # DataplaneError; anything else, reported the same way
                problem = f"{problem}; cannot attach it again: {exc}"
        if problem != self.problem:
            if problem:
                log.error("data plane not forwarding", role=self._role, problem=problem)
            else:
                log.info("data plane forwarding again", role=self._role, was=self.problem)
            self.problem = problem
            await self._report(problem)
        if reattached:
            log.warning("program re-attached", role=self._role)
        return problem
