"""First-fit allocation of contiguous slot regions from the shared slot pool.

Each service half owns one region [base, base + size). Free space is a sorted list of
extents, merged on release, so a pool of a few thousand regions stays cheap to scan.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class RegionAllocator:
    def __init__(self, total: int, used: Iterable[tuple[int, int]] = ()) -> None:
        """A pool of `total` slots, with `used` (base, size) regions already taken."""
        self.total = total
        self._free: list[tuple[int, int]] = []  # sorted (base, size), never adjacent
        pos = 0
        for base, size in sorted(r for r in used if r[1]):
            if base < pos or base + size > total:
                raise ValueError(f"region [{base}, {base + size}) overlaps or is out of range")
            if base > pos:
                self._free.append((pos, base - pos))
            pos = base + size
        if pos < total:
            self._free.append((pos, total - pos))

    @property
    def free_slots(self) -> int:
        return sum(size for _, size in self._free)

    @property
    def used_slots(self) -> int:
        return self.total - self.free_slots

    def fits(self, sizes: Iterable[int], releasing: Iterable[tuple[int, int]] = ()) -> bool:
        """Would regions of these sizes fit, once `releasing` regions are back?"""
        trial = RegionAllocator.__new__(RegionAllocator)
        trial.total = self.total
        trial._free = list(self._free)
        for base, size in releasing:
            trial.release(base, size)
        return all(trial.alloc(size) is not None for size in sorted(sizes, reverse=True))

    def alloc(self, size: int) -> int | None:
        """The base of a new region of `size` slots, or None when nothing fits."""
        if size <= 0:
            return 0
        for i, (base, length) in enumerate(self._free):
            if length >= size:
                if length == size:
                    del self._free[i]
                else:
                    self._free[i] = (base + size, length - size)
                return base
        return None

    def release(self, base: int, size: int) -> None:
        if size <= 0:
            return
        i = bisect.bisect_left(self._free, (base, 0))
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] > base:
            raise ValueError(f"region [{base}, {base + size}) is already free")
        if i < len(self._free) and base + size > self._free[i][0]:
            raise ValueError(f"region [{base}, {base + size}) is already free")
        # merge with the neighbours
        if i < len(self._free) and base + size == self._free[i][0]:
            size += self._free[i][1]
            del self._free[i]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == base:
            base, size = self._free[i - 1][0], self._free[i - 1][1] + size
            del self._free[i - 1]
            i -= 1
        self._free.insert(i, (base, size))
