"""Bounded polling, for state no event announces: another process's (BIRD's routes and
sessions, a controller's acks) or the kernel's (route tables, counters)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _rounds(timeout: float, what: str) -> Iterator[None]:
    """One round per poll until the deadline; then TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        yield
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll pred until it returns something truthy, and return that; TimeoutError after
    timeout seconds."""
    for _ in _rounds(timeout, what):
        if value := pred():
            return value
        time.sleep(interval)
    raise AssertionError("unreachable")


async def async_wait_until(
    pred: Callable[[], T], limit: float, what: str, interval: float = 0.1
) -> T:
    """wait_until for asyncio code: pred runs in a thread (it may call birdc or ip)."""
    for _ in _rounds(limit, what):
        if value := await asyncio.to_thread(pred):
            return value
        await asyncio.sleep(interval)
    raise AssertionError("unreachable")
