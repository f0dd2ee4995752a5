"""Run one benchmark function in a fresh process and hand back what it returns (its typed
rows, pickled): cold measurements stay cold, a crash or a hang stays contained, and a timed
out benchmark still cleans up (SIGTERM unwinds it through its finally blocks)."""

from __future__ import annotations

import multiprocessing
import signal
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _child(conn, fn: Callable[..., object], args: tuple) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def in_child(fn: Callable[..., T], *args: object, timeout: float) -> T:
    """fn(*args) in a spawned process; its exception (as text) becomes a RuntimeError."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    name = f"{fn.__module__}.{fn.__qualname__}"
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"{name}: no result within {timeout:.0f} s")
        status, value = parent.recv()
    except EOFError:
        raise RuntimeError(f"{name}: the process died without a result") from None
    finally:
        proc.join(10)  # it exits once it sent its result
        for stop, wait in ((proc.terminate, 60), (proc.kill, 10)):
            if proc.is_alive():
                stop()
                proc.join(wait)
    if status != "ok":
        raise RuntimeError(f"{name} failed:\n{value}")
    return value
