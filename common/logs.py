"""structlog setup shared by every Weir command (key-value on a TTY, JSON otherwise), and the
helpers that keep what peers send from flooding the logs: clip() and RateLimit."""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Literal

import structlog
from structlog.typing import FilteringBoundLogger

LogFormat = Literal["auto", "json", "console"]


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog (and stdlib logging, for grpc and libraries) once per process."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    lvl = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> FilteringBoundLogger:
    return structlog.get_logger(name)


def clip(text: str, limit: int) -> str:
    """text cut to at most limit characters, saying how much was cut: for text a peer sent,
    which is logged and kept but must not be allowed to grow without bound."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text) - limit} more characters)"
    return text[: max(0, limit - len(note))] + note


class RateLimit:
    """At most `burst` log lines per key in any `period` seconds (a token bucket per key).

        dropped = limit(("agent failed a version", node))
        if dropped is not None:
            log.warning("agent failed a version", node=node, suppressed=dropped)

    Calling it returns None when the line must be dropped, else how many lines of that key
    were dropped since the last one let through. At most max_keys keys are remembered (the
    least recently used go first), so keys made of what peers send cannot grow memory.
    """

    def __init__(
        self,
        period: float = 60.0,
        burst: int = 5,
        *,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("need period > 0, burst >= 1 and max_keys >= 1")
        self.period, self.burst, self.max_keys = period, burst, max_keys
        self._clock = clock
        # key -> [tokens, time of the last refill, lines dropped since the last one let through]
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def __call__(self, key: Hashable) -> int | None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [float(self.burst), now, 0]
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            refill = (now - bucket[1]) * self.burst / self.period
            bucket[0] = min(float(self.burst), bucket[0] + refill)
            bucket[1] = now
        if bucket[0] < 1:
            bucket[2] += 1
            return None
        bucket[0] -= 1
        dropped, bucket[2] = int(bucket[2]), 0
        return dropped
