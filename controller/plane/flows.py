"""Flow log watchers (WatchFlows, `weirctl flows --node`): a node's sampled decisions,
relayed by its agent over its Connect stream while at least one watcher is attached.

The first watcher of a stream turns the agent's relay on (FlowWatch watch=true), the last
one leaving turns it off. Each watcher's FlowWatch also asks for a backlog (the agent's last
kept decisions matching its filter), answered with the watch's id: live batches reach a
watcher only after its backlog, so it sees each decision once, in order.

Filters that can match nothing (a service not <namespace>/<name>, a backend that is not an
address) are refused (INVALID_ARGUMENT), which also bounds what each watch keeps and sends
the agent. Everything is bounded: at most `max_watchers` watchers (RESOURCE_EXHAUSTED beyond), each
with a queue of `queue` decisions (a watcher that reads too slowly loses the oldest, and its
next answer says how many so far), the agent sends at most `per_second` decisions a second
(its batches say how many it held back; live decisions beyond that rate are cut here, and
counted, whatever the agent sends), a batch is cut to BATCH_MAX decisions, and an agent
that does not answer a watch within `answer_timeout` seconds ends it (DEADLINE_EXCEEDED).
When the agent's stream ends, so do its watchers (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from weir.common.logs import clip
from weir.common.pb import pb
from weir.controller.core.parsing import DNS_LABEL

BATCH_MAX = 2000  # decisions of one agent batch kept
DECISION_BYTES = 1024  # a decision larger than this (encoded) is not relayed
BACKLOG_MAX = 1000


class WatchError(Exception):
    """Ends a watch with this gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


@dataclass(eq=False)
class Watcher:
    node: str
    stream: object  # the agent's stream the watch rides on
    send: Callable[[pb.FlowWatch], None]  # a FlowWatch to that stream
    request: pb.WatchFlowsRequest
    id: int
    queue: collections.deque[pb.FlowDecision] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    answered: bool = False  # its backlog arrived: live batches count from now on
    sample: int = 0
    unsent: int = 0
    dropped: int = 0
    ended: str = ""  # why the agent's stream ended

    def take(self) -> list[pb.FlowDecision]:
        out = list(self.queue)
        self.queue.clear()
        self.wake.clear()
        return out

    def response(self, decisions: list[pb.FlowDecision]) -> pb.WatchFlowsResponse:
        return pb.WatchFlowsResponse(
            decisions=decisions, sample=self.sample, dropped=self.dropped, unsent=self.unsent
        )


@dataclass
class _Budget:
    """Live decisions one agent's stream may bring: refilled at the rate asked of the agent,
    up to twice that at once (the agent's own bucket, and batches bunched up in transit)."""

    tokens: float
    at: float = field(default_factory=time.monotonic)
    over: int = 0  # decisions cut so far

    def take(self, wanted: int, per_second: float) -> int:
        now = time.monotonic()
        self.tokens = min(2.0 * per_second, self.tokens + (now - self.at) * per_second)
        self.at = now
        taken = min(wanted, int(self.tokens))
        self.tokens -= taken
        return taken


class FlowWatchers:
    def __init__(
        self,
        *,
        max_watchers: int = 16,
        queue: int = 1024,
        per_second: int = 200,
        answer_timeout: float = 10.0,
    ) -> None:
        self._max = max_watchers
        self._queue = queue
        self._per_second = per_second
        self._answer_timeout = answer_timeout
        self._watchers: dict[int, Watcher] = {}
        self._budgets: dict[int, _Budget] = {}  # by id() of a stream with watchers
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._watchers)

    def attach(
        self,
        node: str,
        stream: object,
        send: Callable[[pb.FlowWatch], None],
        request: pb.WatchFlowsRequest,
    ) -> Watcher:
        """A watcher of the agent on `stream`; raises WatchError when there are too many."""
        if len(self._watchers) >= self._max:
            raise WatchError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"already {len(self._watchers)} flow log watchers, the most this controller takes",
            )
        w = Watcher(node, stream, send, request, next(self._ids))
        self._watchers[w.id] = w
        send(
            pb.FlowWatch(
                watch=True,
                max_per_second=self._per_second,
                backlog=min(request.limit, BACKLOG_MAX),
                service=request.service,
                backend=request.backend,
                id=w.id,
            )
        )
        return w

    def detach(self, w: Watcher) -> None:
        if self._watchers.pop(w.id, None) is None:
            return
        if not w.ended and not any(o.stream is w.stream for o in self._watchers.values()):
            w.send(pb.FlowWatch(watch=False))  # the last one: the agent stops relaying

    def on_batch(self, stream: object, batch: pb.FlowBatch) -> None:
        """A batch from the agent on `stream`: to its watchers (a backlog to its own). What
        nobody waits for costs nothing, and live decisions beyond the rate asked of the
        agent are cut (counted in unsent): a buggy or hostile agent cannot make the event
        loop match more than that against the watchers' filters."""
        if batch.backlog:
            w = self._watchers.get(batch.backlog_id)
            if w is None or w.stream is not stream or w.answered:
                return  # its watcher left meanwhile (or it was answered already)
            w.answered = True
            self._deliver(w, batch, _bounded(batch.decisions[:BATCH_MAX]))
            return
        watchers = [w for w in self._watchers.values() if w.stream is stream and w.answered]
        if not watchers:
            return
        budget = self._budgets.setdefault(id(stream), _Budget(2.0 * self._per_second))
        taken = budget.take(min(len(batch.decisions), BATCH_MAX), self._per_second)
        budget.over += len(batch.decisions) - taken
        decisions = _bounded(batch.decisions[:taken])
        for w in watchers:
            matching = [d for d in decisions if _matches(w.request, d)]
            self._deliver(w, batch, matching, budget.over)

    def stream_ended(self, stream: object, why: str) -> None:
        self._budgets.pop(id(stream), None)
        for w in self._watchers.values():
            if w.stream is stream:
                w.ended = why or "the agent ended it"
                w.wake.set()

    def _deliver(
        self, w: Watcher, batch: pb.FlowBatch, decisions: list[pb.FlowDecision], cut: int = 0
    ) -> None:
        w.sample, w.unsent = batch.sample, batch.unsent + cut
        w.queue.extend(decisions)
        while len(w.queue) > self._queue:
            w.queue.popleft()  # the oldest go: a slow watcher sees the newest
            w.dropped += 1
        w.wake.set()

    async def responses(self, w: Watcher) -> AsyncIterator[pb.WatchFlowsResponse]:
        """What the watcher is sent: the backlog, then (follow) batches until the stream
        ends; raises WatchError with the reason it ends otherwise."""
        try:
            async with asyncio.timeout(self._answer_timeout):
                while not (w.answered or w.ended):
                    await w.wake.wait()
                    w.wake.clear()
        except TimeoutError:
            raise WatchError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"node {w.node}'s agent did not answer within {self._answer_timeout:g} s "
                "(busy applying a version, or a release that cannot relay its flow log)",
            ) from None
        self._check_ended(w)
        first = w.response(w.take())
        if not w.sample:
            off = (
                f"flow sampling is off on node {w.node}: its agent logs decisions only with "
                "--flow-sample N (1 in N packets)"
            )
            if w.request.follow:
                raise WatchError(grpc.StatusCode.FAILED_PRECONDITION, off)
            first.notice = off
        yield first
        while w.request.follow:
            await w.wake.wait()
            self._check_ended(w)
            yield w.response(w.take())

    @staticmethod
    def _check_ended(w: Watcher) -> None:
        if w.ended:
            raise WatchError(
                grpc.StatusCode.UNAVAILABLE, f"node {w.node}'s agent stream ended: {w.ended}"
            )


def _bounded(decisions: Iterable[pb.FlowDecision]) -> list[pb.FlowDecision]:
    return [d for d in decisions if d.ByteSize() <= DECISION_BYTES]


def filter_problem(request: pb.WatchFlowsRequest) -> str | None:
    """Why the request's filters can match no decision (a typo would otherwise watch
    nothing, silently), or None; the backend is made canonical in place."""
    if request.service:
        namespace, _, name = request.service.partition("/")
        problems = [DNS_LABEL.problem(namespace), DNS_LABEL.problem(name)] if name else ["no /"]
        if any(problems):
            return f"service: {clip(request.service, 80)!r} is not <namespace>/<name>"
    if request.backend:
        try:
            request.backend = str(ipaddress.ip_address(request.backend))
        except ValueError:
            return (
                f"backend: {clip(request.backend, 80)!r} is not an address "
                "(without its port, e.g. 10.1.0.1)"
            )
    return None


def _matches(request: pb.WatchFlowsRequest, d: pb.FlowDecision) -> bool:
    if request.service and d.service != request.service:
        return False
    return not request.backend or d.backend.rpartition(":")[0] == request.backend
