"""The `vips` map and the VIP filter bitmap, kept equal to the set of service VIPs.

Several services share a VIP (one per port/protocol) and several VIPs can share a
filter bit, so both are reference counted. A filter word is written whole from
userspace (memcpy); that is safe because every bit that does not change has the same
value before and after, and the bits that do change belong to VIPs without a service.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from collections import Counter
from collections.abc import Iterable

import numpy
from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.flowhash import vipf_bit


def _bit(vip: bytes) -> tuple[int, int]:
    return vipf_bit(str(ipaddress.IPv4Address(vip)))


class VipSet:
    def __init__(self, fd_vips: int, fd_vipf: int) -> None:
        self._fd_vips = fd_vips
        self._fd_vipf = fd_vipf
        self._refs: Counter[bytes] = Counter()
        self._bit_refs: Counter[tuple[int, int]] = Counter()
        self._words = numpy.zeros(layout.VIPF_WORDS, dtype=numpy.uint64)

    def load(self, vips: Iterable[bytes]) -> None:
        """Adopt: take these (one per service) and make both maps match exactly."""
        self._refs = Counter(vips)
        self._bit_refs = Counter(_bit(v) for v in self._refs)
        for vip in self._refs:
            bpfsys.update(self._fd_vips, ct.c_uint32.from_buffer_copy(vip), ct.c_uint32(1))
        present = bpfsys.lookup_batch(self._fd_vips, ct.c_uint32, 4)
        for key, _ in present:
            if bytes(key) not in self._refs:
                bpfsys.delete(self._fd_vips, key)
        for word in range(layout.VIPF_WORDS):
            value = ct.c_uint64()
            bpfsys.lookup(self._fd_vipf, ct.c_uint32(word), value)
            self._words[word] = value.value
        wanted = numpy.zeros(layout.VIPF_WORDS, dtype=numpy.uint64)
        for word, bit in self._bit_refs:
            wanted[word] |= numpy.uint64(1 << bit)
        for word in numpy.flatnonzero(wanted != self._words).tolist():
            self._write_word(word, int(wanted[word]))

    def add(self, vip: bytes) -> None:
        self._refs[vip] += 1
        if self._refs[vip] > 1:
            return
        bpfsys.update(self._fd_vips, ct.c_uint32.from_buffer_copy(vip), ct.c_uint32(1))
        word, bit = _bit(vip)
        self._bit_refs[word, bit] += 1
        if self._bit_refs[word, bit] == 1:
            self._write_word(word, int(self._words[word]) | 1 << bit)

    def remove(self, vip: bytes) -> None:
        self._refs[vip] -= 1
        if self._refs[vip] > 0:
            return
        del self._refs[vip]
        word, bit = _bit(vip)
        self._bit_refs[word, bit] -= 1
        if self._bit_refs[word, bit] == 0:
            del self._bit_refs[word, bit]
            self._write_word(word, int(self._words[word]) & ~(1 << bit))
        bpfsys.delete(self._fd_vips, ct.c_uint32.from_buffer_copy(vip))

    def _write_word(self, word: int, value: int) -> None:
        bpfsys.update(self._fd_vipf, ct.c_uint32(word), ct.c_uint64(value))
        self._words[word] = value
