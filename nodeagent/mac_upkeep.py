"""Keeps the load balancer's backend MACs right between versions (nodeagent.backend_macs).

- Every `retry` seconds, the backends left out for want of a MAC are resolved again, and
  their services re-programmed with them as soon as they resolve.
- Every `refresh` seconds, every programmed backend MAC is re-verified (the kernel does not
  for XDP-forwarded traffic: nodeagent.neighbors), and the services of a backend whose MAC
  changed (a pod recreated with the same IP) are re-programmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from weir.common.logs import get_logger
from weir.nodeagent.backend_macs import BackendMacs
from weir.nodeagent.balancer import Balancer

log = get_logger("weir.agent")


class MacUpkeep:
    def __init__(
        self, balancer: Balancer, macs: BackendMacs, *, retry: float = 2.0, refresh: float = 30.0
    ) -> None:
        self._balancer = balancer
        self._macs = macs
        self._retry = retry
        self._refresh = refresh

    async def run(self) -> None:
        """Both loops, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_every(self._retry, self.retry_unresolved), name="mac-retry")
            tg.create_task(_every(self._refresh, self.refresh_macs), name="mac-refresh")

    async def retry_unresolved(self) -> list[str]:
        """Re-program the services whose left-out backends now resolve. Returns their ids."""
        excluded = {sid: set(ex) for sid, ex in self._macs.excluded.items()}
        if not excluded:
            return []
        addrs = set().union(*excluded.values())
        res = await self._macs.resolve(addrs)
        fixed = addrs & set(res.macs)
        ids = [sid for sid, ex in excluded.items() if fixed & ex]
        await self._balancer.reprogram(ids)
        return ids

    async def refresh_macs(self) -> list[str]:
        """Re-verify every programmed backend MAC; re-program the services of those that
        changed. Returns their ids."""
        services = self._balancer.applied
        addrs = self._macs.in_use({b.address for s in services.values() if s for b in s.backends})
        if not addrs:
            return []
        moved = self._macs.moved(await self._macs.resolve(addrs, reprobe=True))
        if not moved:
            return []
        log.info("backend MACs changed", addresses=sorted(moved))
        ids = [
            sid
            for sid, spec in self._balancer.applied.items()
            if spec and any(b.address in moved for b in spec.backends)
        ]
        await self._balancer.reprogram(ids)
        return ids


async def _every(interval: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("backend MAC upkeep failed", job=job.__name__)
