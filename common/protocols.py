"""The L4 protocols Weir knows: one table for both sides, weirctl and the data plane.

The node-plane enum (pb.Protocol) uses the IP protocol numbers, so one number names a
protocol everywhere: in Kubernetes objects (by name), in snapshots (enum) and in BPF maps.
"""

from __future__ import annotations

# Kubernetes' names -> IP protocol numbers (= pb.Protocol values).
NUMBERS: dict[str, int] = {"TCP": 6, "UDP": 17, "SCTP": 132}
NAMES: dict[int, str] = {number: name for name, number in NUMBERS.items()}
# What the XDP program load-balances: protocols with ports at the start of the L4 header.
DATAPLANE: frozenset[int] = frozenset({NUMBERS["TCP"], NUMBERS["UDP"]})


def name_of(number: int) -> str:
    """The protocol's name, or its number as text when Weir does not know it."""
    return NAMES.get(number, str(number))


def number_of(name: str) -> int:
    """The IP protocol number of a name in any case; KeyError when unknown."""
    return NUMBERS[name.upper()]
