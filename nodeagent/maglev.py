"""Maglev lookup tables (Maglev paper, NSDI 2016, section 3.4), built by the C core _maglev.

Every node must build the same table from the same backend set, whatever order the backends
arrive in, so the population order is the backends' identity strings sorted by their UTF-8
bytes; the result is then labelled with the caller's indices.

Hashing: offset = h1(id) mod M and skip = h2(id) mod (M - 1) + 1, where h1 and h2 are
SipHash-2-4 of the identity's UTF-8 bytes under two fixed keys with the cluster seed xored
into the first key word (see _maglev.c). Weights follow Katran's MaglevHashV2: each round, a
backend adds its weight to a credit and takes a turn when the credit reaches the largest
weight. Weights are reduced by their gcd first and equal weights mean "unweighted"; both
give exactly the same table as without the reduction.

Errors: every bad input raises ValueError (TypeError for wrong types) with a message fit
for a user; an empty backend list raises NoBackendsError (a ValueError): a service without
backends has no table, and the caller decides what that means (e.g. drop its packets).
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from weir.common import protocols
from weir.common.tablesize import MAX_TABLE_SIZE, validate_table_size
from weir.nodeagent import _maglev

MAX_WEIGHT = 2**32 - 1
MAX_SEED = 2**64 - 1


class NoBackendsError(ValueError):
    """build_table was given no backends: there is no table to build."""


def backend_id(address: str, port: int, protocol: str | int) -> str:
    """The stable identity a backend is hashed by: "10.0.0.1:8080/TCP", "[2001:db8::1]:80/UDP".

    The address is written in canonical form (so "2001:DB8:0::1" and "2001:db8::1" are the
    same backend); protocol is "TCP", "UDP" or "SCTP" in any case, or the IP protocol number
    (6, 17, 132) as in the node-plane Protocol enum.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"backend address {address!r} is not an IP address") from None
    port = operator.index(port)
    if not 1 <= port <= 65535:
        raise ValueError(f"backend port {port} is out of range [1, 65535]")
    if isinstance(protocol, str):
        name = protocol.upper()
    else:
        name = protocols.NAMES.get(protocol, "")
    if name not in protocols.NUMBERS:
        known = ", ".join(protocols.NUMBERS)
        raise ValueError(f"backend protocol {protocol!r} is not one of {known}")
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{host}:{port}/{name}"


@dataclass(frozen=True)
class _Canonical:
    """A backend set in population order, and what the caller called each backend."""

    ids: tuple[str, ...]  # sorted by UTF-8 bytes (= code point order)
    weights: tuple[int, ...] | None  # reduced by their gcd; None when all equal
    order: np.ndarray  # uint32: order[k] = the caller's index of ids[k]


def _canonical(backends: Sequence[str], weights: Sequence[int] | None) -> _Canonical:
    if isinstance(backends, str | bytes):
        raise TypeError("backends must be a sequence of identity strings, not one string")
    ids = list(backends)
    if not ids:
        raise NoBackendsError("no backends: a service without backends has no Maglev table")
    for b in ids:
        if not isinstance(b, str) or not b:
            raise TypeError(f"backend identity {b!r} is not a non-empty string")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    dups = sorted({ids[a] for a, b in itertools.pairwise(order) if ids[a] == ids[b]})
    if dups:
        raise ValueError(f"duplicate backends: {', '.join(dups)}")
    reduced: tuple[int, ...] | None = None
    if weights is not None:
        if isinstance(weights, str | bytes):
            raise TypeError("weights must be a sequence of integers")
        w = [operator.index(x) for x in weights]
        if len(w) != len(ids):
            raise ValueError(f"{len(w)} weights for {len(ids)} backends")
        bad = [f"{ids[i]}={x}" for i, x in enumerate(w) if not 1 <= x <= MAX_WEIGHT]
        if bad:
            raise ValueError(
                f"backend weights must be in [1, {MAX_WEIGHT}] (remove a backend to drain it): "
                + ", ".join(bad)
            )
        g = math.gcd(*w)
        reduced = None if all(x == w[0] for x in w) else tuple(w[k] // g for k in order)
    return _Canonical(
        ids=tuple(ids[k] for k in order), weights=reduced, order=np.array(order, dtype=np.uint32)
    )


def _check_size_seed(size: int, seed: int) -> tuple[int, int]:
    size = operator.index(size)
    validate_table_size(size)
    seed = operator.index(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"Maglev seed {seed} is out of range [0, 2**64 - 1]")
    return size, seed


def _populate(c: _Canonical, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    table = np.empty(size, dtype=np.uint32)
    weights = None if c.weights is None else np.array(c.weights, dtype=np.uint32)
    _maglev.populate(tuple(i.encode() for i in c.ids), labels, weights, seed, table)
    return table


def build_table(
    backends: Sequence[str], size: int, weights: Sequence[int] | None = None, seed: int = 0
) -> np.ndarray:
    """The Maglev table for backends: uint32[size], each entry an index into backends.

    backends are identity strings (see backend_id), unique; size is a prime accepted by
    common.tablesize.validate_table_size; weights (one per backend, >= 1) change how often a
    backend's turn comes; seed (0 <= seed < 2**64) is the cluster's. Without weights every
    backend gets floor(size/N) or ceil(size/N) slots. The population runs in C without the
    GIL, so calling this through asyncio.to_thread keeps an event loop responsive.

    Cost: about 1 ms for N = 100, size = 65537. Weights cost one check per backend per
    round, and there are up to size rounds when one weight dwarfs the rest (N = 1000,
    weights 1 and 2**32 - 1, size = 131071: about 0.1 s).
    """
    size, seed = _check_size_seed(size, seed)
    c = _canonical(backends, weights)
    return _populate(c, c.order, size, seed)


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    slots: int  # table slots held over all entries (4 bytes each)


class TableCache:
    """Maglev tables cached per (backend set, size, weights, seed), least recently used first out.

    The key is the set, not the order: the same backends in another order are a hit (the
    cached table is relabelled for the caller). Returned arrays are read-only; equal inputs
    may return the very same array object. Thread-safe; two threads missing on the same key
    at once may both build it (harmlessly). max_slots bounds memory: 4 bytes per slot.
    """

    def __init__(self, max_slots: int = 1 << 25) -> None:
        if max_slots < MAX_TABLE_SIZE:
            raise ValueError(f"max_slots {max_slots} cannot hold one table of {MAX_TABLE_SIZE}")
        self._max_slots = max_slots
        self._tables: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._slots = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(
        self,
        backends: Sequence[str],
        size: int,
        weights: Sequence[int] | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Same contract as build_table, read-only result."""
        size, seed = _check_size_seed(size, seed)
        c = _canonical(backends, weights)
        key = (c.ids, c.weights, size, seed)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
        if table is None:
            # Stored labelled in population order, so any order of the same set can use it.
            table = _populate(c, np.arange(len(c.ids), dtype=np.uint32), size, seed)
            table.flags.writeable = False
            self._store(key, table)
        if np.array_equal(c.order, np.arange(len(c.ids))):
            return table
        relabelled = c.order[table]
        relabelled.flags.writeable = False
        return relabelled

    def _store(self, key: tuple, table: np.ndarray) -> None:
        with self._lock:
            if key in self._tables:
                return
            self._tables[key] = table
            self._slots += table.size
            while self._slots > self._max_slots:
                _, old = self._tables.popitem(last=False)
                self._slots -= old.size
                self._evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._evictions, len(self._tables), self._slots
            )


def disruption(
    old_table: np.ndarray,
    old_backends: Sequence[str],
    new_table: np.ndarray,
    new_backends: Sequence[str],
) -> float:
    """Share of slots that moved from one backend to another backend present in both sets.

    Slots of a removed backend must move and slots taken by an added backend must change, so
    neither counts; what remains is the needless churn Maglev keeps small (paper, section 5.3).
    Tables are compared slot by slot by backend identity; they must have the same size.
    """
    old_table = np.asarray(old_table)
    new_table = np.asarray(new_table)
    if old_table.shape != new_table.shape or old_table.ndim != 1 or old_table.size == 0:
        raise ValueError("disruption needs two non-empty tables of the same size")
    universe = {b: i for i, b in enumerate(dict.fromkeys([*old_backends, *new_backends]))}
    old_u = np.array([universe[b] for b in old_backends], dtype=np.int64)[old_table]
    new_u = np.array([universe[b] for b in new_backends], dtype=np.int64)[new_table]
    in_both = np.zeros(len(universe), dtype=bool)
    in_both[[universe[b] for b in set(old_backends) & set(new_backends)]] = True
    moved = (old_u != new_u) & in_both[old_u] & in_both[new_u]
    return float(np.count_nonzero(moved)) / old_table.size
