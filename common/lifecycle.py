"""How a Weir process runs and stops: one task group, one shutdown path.

    code = await run_until_stopped(log, {"source": source.run(state), ...}, shutdown=app.close)

Every task runs supervised in one TaskGroup. SIGTERM or SIGINT, or any task failing, ends
the group (the other tasks are cancelled and awaited), then `shutdown` runs in every case,
so a failing task cannot skip it. Returns the exit code: 0 after a signal, 1 when a task
failed (the supervisor restarts the process).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from structlog.typing import FilteringBoundLogger

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stop(Exception):
    """Raised inside the task group to end it on a signal."""


async def run_until_stopped(
    log: FilteringBoundLogger,
    tasks: Mapping[str, Coroutine[Any, Any, object]],
    *,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        async with asyncio.TaskGroup() as tg:
            for name, coro in tasks.items():
                tg.create_task(coro, name=name)
            await stop.wait()
            log.info("stopping on signal")
            raise _Stop
    except* _Stop:
        pass
    except* Exception as group:
        for exc in group.exceptions:
            log.error("task failed", error=repr(exc), exc_info=exc)
        code = 1
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        if shutdown is not None:
            try:
                await shutdown()
            except Exception as exc:
                log.error("shutdown failed", error=repr(exc), exc_info=exc)
                code = 1
    return code
