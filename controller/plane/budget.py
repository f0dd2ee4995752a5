"""A budget of bytes that writes in progress may hold at once, shared by every agent stream.

    async with budget.hold(len(message)):
        await context.write(message)

A write waits until its bytes fit beside those of the writes in progress; one that is larger
than the whole budget goes alone, so every write goes eventually. What slow readers pin (a
message, and gRPC's copy of it, until the agent takes it) stays within about twice the budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from weir.common.aio import Generation


class ByteBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the budget must be at least 1 byte")
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most held at once (tests, inspection)
        self._released = Generation()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        seen = self._released.value
        while self.used and self.used + size > self.limit:
            seen = await self._released.wait_past(seen)
        self.used += size
        self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            self.used -= size
            self._released.bump()

    async def drained(self) -> None:
        """Wait until no write holds any bytes (a write's bytes are released when the server
        has handed it over, which can come after the agent already read it)."""
        seen = self._released.value
        while self.used:
            seen = await self._released.wait_past(seen)
