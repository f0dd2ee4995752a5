"""wait_any (weir.common.aio): the status writers wait on the publisher's reductions and the
node plane's changes at once."""

from __future__ import annotations

import asyncio

import pytest
from weir.common.aio import Generation, wait_any

pytestmark = pytest.mark.timeout(10)


async def test_wait_any_wakes_on_either_and_leaves_no_task() -> None:
    a, b = Generation(), Generation()
    a.bump()
    await asyncio.wait_for(wait_any([(a, 0), (b, 0)]), 1)  # already past: at once
    before = len(asyncio.all_tasks())
    waiting = asyncio.create_task(wait_any([(a, a.value), (b, b.value)]))
    await asyncio.sleep(0)  # it is waiting now
    assert not waiting.done()
    b.bump()
    await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0)  # the other wait's cancellation lands
    assert len(asyncio.all_tasks()) == before
