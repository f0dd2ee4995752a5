"""Index pools whose released entries become reusable only after an RCU grace period.

A released index may still be read by a packet that started before the release (an
old table naming a backend, a deleted service element); it joins the free list when
the Dataplane has waited for a grace period (GraceBarrier), not before.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from weir.nodeagent.dataplane.layout import BE_GEN_MASK


class GracePool:
    """Indices 0..capacity-1: in use, pending (released since the last grace period)
    or free. Never-used indices are handed out first (so retired entries stay revivable
    as long as possible), then released ones, oldest first."""

    def __init__(self, capacity: int, in_use: Iterable[int] = ()) -> None:
        self.capacity = capacity
        used = set(in_use)
        self._next = max(used, default=-1) + 1  # every index from here on is unused
        self._free: dict[int, None] = {i: None for i in range(self._next) if i not in used}
        self._pending: list[int] = []

    @property
    def free_now(self) -> int:
        return len(self._free) + self.capacity - self._next

    @property
    def available(self) -> int:
        """Free now or after the next grace period."""
        return self.free_now + len(self._pending)

    @property
    def used(self) -> int:
        return self.capacity - self.available

    def take(self) -> int:
        if self._next < self.capacity:
            self._next += 1
            return self._next - 1
        index = next(iter(self._free))
        del self._free[index]
        return index

    def release(self, index: int) -> None:
        self._pending.append(index)

    def grace_passed(self) -> None:
        for index in self._pending:
            self._free[index] = None
        self._pending.clear()

    def claim(self, index: int) -> None:
        """Take a specific free or pending index back into use."""
        if index >= self._next:
            self._free.update(dict.fromkeys(range(self._next, index)))
            self._next = index + 1
        elif index in self._free:
            del self._free[index]
        else:
            self._pending.remove(index)


class BackendPool(GracePool):
    """Backend indices, with the generation of each one's last allocation and the
    retired entries that can be revived (same service, same backend, entry intact)."""

    def __init__(self, capacity: int, gens: list[int], in_use: Iterable[int] = ()) -> None:
        super().__init__(capacity, in_use)
        self.gens = gens
        self.halves = [0] * capacity  # mirror of be_meta.halves
        self._revivable: dict[Hashable, int] = {}
        self._owner: dict[int, Hashable] = {}

    def next_gen(self, index: int) -> int:
        gen = self.gens[index] % BE_GEN_MASK + 1  # 1..2**20-1, never 0
        self.gens[index] = gen
        return gen

    def retire(self, index: int, identity: Hashable) -> None:
        """Release an index whose entry stays intact until it is taken again."""
        self.release(index)
        self.remember(index, identity)

    def remember(self, index: int, identity: Hashable) -> None:
        old = self._revivable.pop(identity, None)
        if old is not None:
            self._owner.pop(old, None)
        self._revivable[identity] = index
        self._owner[index] = identity

    def revive(self, identity: Hashable) -> int | None:
        index = self._revivable.pop(identity, None)
        if index is None:
            return None
        del self._owner[index]
        self.claim(index)
        return index

    def can_revive(self, identity: Hashable) -> bool:
        return identity in self._revivable

    def take(self) -> int:
        index = super().take()
        identity = self._owner.pop(index, None)
        if identity is not None:
            del self._revivable[identity]
        return index
