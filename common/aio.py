"""Small asyncio primitives shared by the controller and the agent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class Generation:
    """A counter that tasks can wait on: `bump()` wakes every waiter of an older value.

    Waiters never miss a change (they compare numbers, not edge-triggered events) and a
    burst of bumps wakes each waiter once. Use from one event loop thread.
    """

    def __init__(self) -> None:
        self._value = 0
        self._event = asyncio.Event()

    @property
    def value(self) -> int:
        return self._value

    def bump(self) -> int:
        self._value += 1
        # Replace the event so waiters that wake late do not see a stale `set`.
        self._event.set()
        self._event = asyncio.Event()
        return self._value

    async def wait_past(self, seen: int) -> int:
        """Wait until the value is greater than `seen`; return the new value."""
        while self._value <= seen:
            await self._event.wait()
        return self._value


async def wait_any(seen: Iterable[tuple[Generation, int]]) -> None:
    """Wait until one of these generations is past the value seen of it."""
    pairs = list(seen)
    if any(g.value > v for g, v in pairs):
        return
    waits = [asyncio.ensure_future(g.wait_past(v)) for g, v in pairs]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
