"""Publishing the connected LB agents' health reports on their Nodes, on every replica.

Each replica serves only the agents connected to it; every replica decides from the reports
of all of them (controller/plane/health.py, follow). So each replica writes the report of
each of its connected agents that checks something into that agent's Node, in the annotation
`weir.dev/health-report` (controller/core/healthreport.py):

- when the report changes, at once, but at most once per `min_interval` seconds for each
  node (a flapping check writes no more often; another node's change does not wait), and
  every `renew` seconds to renew it: readers count a report for 3 x renew seconds after they
  saw it change, so a report whose replica died stops counting (by each reader's own clock:
  the replicas' clocks need not agree).
- a JSON merge patch of the one annotation, no resourceVersion: only the replica the agent
  is connected to writes it, and the kubelet's own writes to the Node do not conflict.
- when the agent disconnects (or checks nothing any more), the replica removes the
  annotation with a JSON patch that first tests it still holds what this replica wrote: if
  the agent is connected to another replica by then, the newer report stays.
- a Node that does not exist (404) is not retried before the next change or renewal.
- the leader removes reports that did not change between two of its sweeps, 3 x renew
  seconds apart (collect_garbage): those of a replica that died, for an agent that did not
  reconnect. They no longer counted anyway.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from weir.common.logs import get_logger
from weir.controller.core.health import NodeReport
from weir.controller.core.healthreport import ANN_HEALTH_REPORT, decode, encode
from weir.controller.core.parsing import ParseError
from weir.controller.core.state import ClusterState
from weir.controller.kube.api import JSON_PATCH, MERGE_PATCH, NODES, ApiError, KubeAPI
from weir.controller.plane.health import node_report
from weir.controller.plane.servicer import NodePlane

log = get_logger("weir.healthpublish")

POINTER = "/metadata/annotations/" + ANN_HEALTH_REPORT.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class _Written:
    report: NodeReport
    text: str
    at: float  # loop time of the write: renewed `renew` seconds later


class HealthReportWriter:
    def __init__(
        self,
        api: KubeAPI,
        plane: NodePlane,
        *,
        replica: str,
        renew: float = 10.0,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.plane = api, plane
        self.replica = replica
        self.renew, self.min_interval = renew, min_interval
        self._clock = clock
        self._written: dict[str, _Written] = {}  # node -> what this replica wrote there
        self._failed: dict[str, float] = {}  # node -> loop time of its last failed write
        self._swept: dict[str, str] = {}  # node -> its report at the last sweep

    def desired(self) -> dict[str, NodeReport]:
        """The report of each connected agent that checks something."""
        return {
            node: node_report(node, status)
            for node, status in self.plane.connected_statuses()
            if status.health_checked
        }

    def _due(self, desired: Mapping[str, NodeReport]) -> dict[str, float]:
        """Node -> the loop time its write (or removal) is due at: a changed report at once,
        but at most once per min_interval for each node (and after a failed write), an
        unchanged one at its renewal."""
        due = {node: 0.0 for node in self._written.keys() - desired.keys()}
        for node, report in desired.items():
            w = self._written.get(node)
            if w is None:
                due[node] = 0.0
            elif w.report != report:
                due[node] = w.at + self.min_interval
            else:
                due[node] = w.at + self.renew
        for node, at in self._failed.items():
            if node in due:
                due[node] = max(due[node], at + self.min_interval)
        return due

    def _sooner(self, than: float | None) -> bool:
        """Something is due before `than` (None: ever)."""
        return any(than is None or at < than for at in self._due(self.desired()).values())

    async def run(self) -> None:
        """Write what is due, until cancelled (on every replica)."""
        log.info("health report publisher running", replica=self.replica, renew=self.renew)
        loop = asyncio.get_running_loop()
        while True:
            next_at = min(self._due(self.desired()).values(), default=None)
            if next_at is None or next_at > loop.time():
                try:
                    # Until then, or until an agent's change makes something due earlier.
                    async with asyncio.timeout_at(next_at):
                        await self.plane.wait_for(functools.partial(self._sooner, next_at))
                except TimeoutError:
                    pass
                continue
            await self.write_due()

    async def collect_garbage(self, state: ClusterState) -> None:
        """Remove stale reports, until cancelled (on the leader)."""
        while True:
            await self.sweep(state)
            await asyncio.sleep(3 * self.renew)

    async def sweep(self, state: ClusterState) -> None:
        """Remove the reports on the Nodes that have not changed since the last sweep (every
        renewal changes a report: these were not renewed since), but not malformed ones (not
        ours: they stay, as errors) nor this replica's own. The first sweep only looks."""
        texts = state.health_reports()
        for node, text in sorted(texts.items()):
            if self._swept.get(node) != text or node in self._written:
                continue
            try:
                decode(node, text)
            except ParseError:
                continue
            log.info("removing a stale health report", node=node)
            await self._remove(node, text)
        self._swept = dict(texts)

    async def write_due(self) -> None:
        """One pass: write the reports due, remove the gone ones that are due."""
        now = asyncio.get_running_loop().time()
        desired = self.desired()
        due = self._due(desired)
        self._failed = {n: t for n, t in self._failed.items() if n in due}  # gone: forgotten
        for node, at in sorted(due.items()):
            if at > now:
                continue
            if node in desired:
                done = await self._write(node, desired[node], now)
            else:
                done = await self._remove(node, self._written[node].text) is not False
                if done:
                    del self._written[node]
            if done:
                self._failed.pop(node, None)
            else:
                self._failed[node] = now

    async def _write(self, node: str, report: NodeReport, now: float) -> bool:
        text = encode(report, self.replica, self._clock())
        truncated = decode(node, text).truncated
        if truncated:
            log.warning("health report too big: frontends left out", node=node, left=truncated)
        patch = {"metadata": {"annotations": {ANN_HEALTH_REPORT: text}}}
        if await self._patch(node, patch) is False:
            return False
        self._written[node] = _Written(report, text, now)
        return True

    async def _remove(self, node: str, text: str) -> bool | None:
        """Remove the annotation if it still holds text (as _patch)."""
        ops = [{"op": "test", "path": POINTER, "value": text}, {"op": "remove", "path": POINTER}]
        return await self._patch(node, ops, JSON_PATCH, superseded_ok=True)

    async def _patch(
        self,
        node: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        content_type: str = MERGE_PATCH,
        *,
        superseded_ok: bool = False,
    ) -> bool | None:
        """True: written; None: nothing to write (no such Node, or, superseded_ok, the
        annotation changed: the test failed); False: failed, logged, retried next pass."""
        try:
            await self.api.patch(NODES, "", node, patch, content_type=content_type)
        except ApiError as e:
            if e.status == 404 or (superseded_ok and e.status == 422):
                log.debug("health report not written", node=node, status=e.status)
                return None
            log.warning("health report write failed", node=node, error=str(e))
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("health report write failed", node=node, error=repr(e))
            return False
        return True
