"""The loop from cluster state to snapshot versions: wait, coalesce, reduce, publish.

Versions are rate-limited by a debounce window (default 50 ms): a change after a quiet
window is published at once (an isolated endpoint change pays no delay), and every change
that follows within the window lands in one reduce at its end, so a rolling update makes at
most one version per window, not one per pod. Nothing
is published before the sources delivered their first full list of every required kind:
an agent must never receive the empty state of a controller that is still starting.

`reduced` keeps what the last reduce worked from and what it found wrong, together, and
`reductions` bumps with each: readers that report those problems on the objects (the
BGPAdvertisement status) pair each problem with the object's generation it came from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from weir.common.aio import Generation
from weir.common.logs import get_logger
from weir.common.pb import pb
from weir.controller.core.objects import ALL_KINDS
from weir.controller.core.reduce import ReduceConfig, ReduceResult, reduce
from weir.controller.core.snapshots import Prepared, SnapshotStore
from weir.controller.core.state import ClusterInputs, ClusterState
from weir.controller.metrics import Metrics

log = get_logger("weir.publish")

DEFAULT_DEBOUNCE = 0.05
# Reduce runs in a thread once it takes longer than this, so the streams stay served.
_THREAD_THRESHOLD = 0.005


@dataclass(frozen=True)
class Reduced:
    """What one reduce worked from, and the problems it found in it."""

    inputs: ClusterInputs
    errors: tuple[pb.ObjectError, ...]


class Publisher:
    def __init__(
        self,
        state: ClusterState,
        store: SnapshotStore,
        config: ReduceConfig,
        *,
        debounce: float = DEFAULT_DEBOUNCE,
        metrics: Metrics | None = None,
        required_kinds: frozenset[str] = ALL_KINDS,
    ) -> None:
        self.state = state
        self.store = store
        self.config = config
        self.debounce = debounce
        self.metrics = metrics or Metrics()
        self.required_kinds = required_kinds
        self._reduce_errors: tuple[pb.ObjectError, ...] = ()
        self._last_duration = 0.0
        self._held: Mapping[str, str] = MappingProxyType({})  # see ClusterInputs.held
        self.reduced: Reduced | None = None  # the last published reduce
        self.reductions = Generation()  # bumps with each published reduce

    def errors(self) -> list[pb.ObjectError]:
        """Bad input from the state (parse, source) and from reduce, sorted."""
        errors = [*self.state.errors(), *self._reduce_errors]
        errors.sort(key=lambda e: (e.kind, e.namespace, e.name, e.message))
        return errors

    async def run(self) -> None:
        """Publish versions until cancelled."""
        seen = -1
        waiting_logged = False
        loop = asyncio.get_running_loop()
        last_publish = -float("inf")
        while True:
            seen = await self.state.wait_changed(seen)
            missing = self.required_kinds - self.state.listed_kinds
            if missing:
                if not waiting_logged:
                    log.info("waiting for the first list of", kinds=sorted(missing))
                    waiting_logged = True
                continue
            hold = last_publish + self.debounce - loop.time()
            if hold > 0:
                await asyncio.sleep(hold)
            seen = self.state.generation
            inputs = dataclasses.replace(self.state.inputs(), held=self._held)
            built = await self._build(inputs)
            if built is not None:
                self._publish(inputs, *built)
            last_publish = loop.time()

    async def _build(self, inputs: ClusterInputs) -> tuple[ReduceResult, Prepared] | None:
        start = time.perf_counter()
        try:
            if self._last_duration > _THREAD_THRESHOLD:
                result, prepared = await asyncio.to_thread(self._reduce, inputs)
            else:
                result, prepared = self._reduce(inputs)
        except Exception as exc:
            # A reduce bug must not take the controller down: keep serving the last version.
            log.exception("reduce failed; keeping the last snapshot")
            self._reduce_errors = (pb.ObjectError(kind="Controller", message=f"reduce: {exc}"),)
            return None
        finally:
            self._last_duration = time.perf_counter() - start
            self.metrics.reduce_seconds.observe(self._last_duration)
        return result, prepared

    def _reduce(self, inputs: ClusterInputs) -> tuple[ReduceResult, Prepared]:
        result = reduce(inputs, self.config)
        return result, self.store.prepare(result.cluster)

    def _publish(self, inputs: ClusterInputs, result: ReduceResult, prepared: Prepared) -> None:
        self._reduce_errors = tuple(result.errors)
        self.reduced = Reduced(inputs, self._reduce_errors)
        self.metrics.object_errors.set(len(self.errors()))
        before = self.store.version
        version = self.store.commit(prepared)
        self._held = MappingProxyType({s.id: s.service for s in result.cluster.services})
        if version != before:
            self.metrics.versions.inc()
            log.info(
                "snapshot published",
                version=version,
                services=len(result.cluster.services),
                nodes_with_bgp=len(result.cluster.nodes),
                errors=len(self._reduce_errors),
                reduce_ms=round(self._last_duration * 1000, 2),
            )
        self.reductions.bump()
