"""Fixtures shared by the agent's tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from weir.common.aio import Generation
from weir.nodeagent.health.checker import HealthChecker

from tests.nodeagent.standins import loopback_checker


@pytest.fixture
async def checker() -> AsyncIterator[tuple[HealthChecker, Generation]]:
    """A running health checker over loopback (no path program), and its changes."""
    changes = Generation()
    hc = loopback_checker(changes, refresh=60)
    task = asyncio.create_task(hc.run())
    yield hc, changes
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
