"""Maglev table sizes: one rule for the controller (annotation) and the agent (maps)."""

from __future__ import annotations

DEFAULT_TABLE_SIZE = 16381
# Below ~100 slots per backend the balance degrades (Maglev paper §5.3); 251 is the
# smallest size Cilium offers. The upper bound keeps one service's two halves within
# a sane share of the slot map.
MIN_TABLE_SIZE = 251
MAX_TABLE_SIZE = 131071


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def validate_table_size(size: int) -> None:
    """Raise ValueError with a message fit for a user when size is not usable."""
    if not MIN_TABLE_SIZE <= size <= MAX_TABLE_SIZE:
        raise ValueError(
            f"Maglev table size {size} is out of range [{MIN_TABLE_SIZE}, {MAX_TABLE_SIZE}]"
        )
    if not is_prime(size):
        raise ValueError(f"Maglev table size {size} is not prime (e.g. 16381 or 65537)")
