"""Sends the node's NodeStatus to the controller: every `interval` seconds, and soon after
anything it shows changes (a version applied, services re-programmed, a BGP session or
route changed). Whatever changed bumps `changes`; a burst of bumps sends one report.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb

log = get_logger("weir.agent")


@dataclass(frozen=True)
class StatusReporter:
    build: Callable[[], Awaitable[pb.NodeStatus]]
    send: Callable[[pb.NodeStatus], None]
    changes: Generation
    interval: float = field(default=10.0, kw_only=True)  # seconds

    async def run(self) -> None:
        """Until cancelled. Changes made before it starts are reported at once."""
        seen = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.changes.wait_past(seen)
            seen = self.changes.value  # the report built next shows every change up to here
            try:
                self.send(await self.build())
            except Exception:
                log.exception("status report failed")
