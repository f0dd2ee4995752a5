"""Pause the cyclic garbage collector around bulk allocation (parsing, reducing).

Building a snapshot allocates hundreds of thousands of short-lived objects and no reference
cycles; with a big heap alive (the cluster state), the allocation counts trigger full
collections that cost more than the work itself. Reference counting still frees everything.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
