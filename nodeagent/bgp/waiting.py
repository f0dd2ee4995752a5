"""Waiting for the first of several things (ExaBGP exits, its API connects, work arrives)
without leaving tasks behind."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def first_done(*coros: Coroutine[Any, Any, Any]) -> list[asyncio.Task[Any]]:
    """Run each coroutine as a task until one finishes; the others are cancelled and
    awaited (also when the caller is cancelled). Returns the tasks in the order given: the
    ones that finished are those not cancelled()."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tasks
