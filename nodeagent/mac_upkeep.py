"""Keeps the load balancer's backend MACs right between versions (nodeagent.backend_macs).

- Every `retry` seconds, the backends left out for want of a MAC (or of a route to their
  node) are resolved again, and their services re-programmed with them as soon as they
  resolve.
- Every `refresh` seconds, every programmed backend's route and MAC are re-verified (the
  kernel does not for XDP-forwarded traffic: nodeagent.neighbors), and the services of a
  backend whose MAC changed (a host recreated with the same IP, a node's route moved to
  another gateway) are re-programmed.
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
        backends = set().union(*excluded.values())
        fixed = self._macs.resolved(backends, await self._macs.resolve(backends))
        ids = [sid for sid, ex in excluded.items() if fixed & ex]
        await self._balancer.reprogram(ids)
        return ids

    async def refresh_macs(self) -> list[str]:
        """Re-verify every programmed backend's MAC; re-program the services of those that
        changed. Returns their ids."""
        backends = self._macs.in_use()
        if not backends:
            return []
        ids = self._macs.moved(await self._macs.resolve(backends, reprobe=True))
        if not ids:
            return []
        log.info("backend MACs changed", services=ids)
        await self._balancer.reprogram(ids)
        return ids


async def _every(interval: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("backend MAC upkeep failed", job=job.__name__)
