"""Python twins of bpf/weir_hash.h: predict what the XDP program computes.

Used by the tests (which backend must a flow reach?) and by weirctl (validate a
conntrack display record). Bit-identical to the C code; test_xdp.py checks it
against the kernel.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

from weir.nodeagent.dataplane.layout import VIPF_HASH_MUL, VIPF_WORDS

_M32 = 0xFFFFFFFF
HASH_INIT = 0x9E3779B9


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    c ^= b
    c = (c - _rol(b, 14)) & _M32
    a ^= c
    a = (a - _rol(c, 11)) & _M32
    b ^= a
    b = (b - _rol(a, 25)) & _M32
    c ^= b
    c = (c - _rol(b, 16)) & _M32
    a ^= c
    a = (a - _rol(c, 4)) & _M32
    b ^= a
    b = (b - _rol(a, 14)) & _M32
    c ^= b
    c = (c - _rol(b, 24)) & _M32
    return a, b, c


def flow_hash(saddr: str, sport: int, dport: int, proto: int, seed: int) -> int:
    """The Maglev flow hash of weir_flow_hash (host-order inputs)."""
    init = (HASH_INIT + seed) & _M32
    a = (init + int(ipaddress.IPv4Address(saddr))) & _M32
    b = (init + ((sport << 16) | dport)) & _M32
    c = (init + proto) & _M32
    return _mix(a, b, c)[2]


def reduce(hash_: int, size: int) -> int:
    """weir_reduce: map a 32-bit hash onto [0, size)."""
    return (hash_ * size) >> 32


def maglev_slot(
    saddr: str, sport: int, dport: int, proto: int, seed: int, size: int, client_ip: bool = False
) -> int:
    """The table slot a new flow of a Maglev service lands on. client_ip: the service has
    ClientIP affinity (also with the random strategy), so the source port is not hashed."""
    return reduce(flow_hash(saddr, 0 if client_ip else sport, dport, proto, seed), size)


def _raw32(b: bytes) -> int:
    """A 4-byte network-order field as the program loads it (host-order integer)."""
    return int.from_bytes(b, sys.byteorder)


_M64 = (1 << 64) - 1
CT_KEY_MUL = 0x9E3779B97F4A7C15
CT_FIN_MUL = 0xD6E8FEB86659FD93


def ct_position(
    saddr: str, daddr: str, sport: int, dport: int, proto: int, key: int, buckets: int
) -> tuple[int, int]:
    """(bucket, fingerprint) of a 5-tuple under the node's secret, as weir_ct_hash
    computes them (layout 4 on)."""
    key2 = (key * CT_KEY_MUL) & _M64
    s, d = _raw32(socket.inet_aton(saddr)), _raw32(socket.inet_aton(daddr))
    ports = _raw32(struct.pack("!HH", sport, dport))
    h = (s + (key & _M32)) * (d + (key >> 32)) + (ports + (key2 & _M32)) * (proto + (key2 >> 32))
    h &= _M64
    h ^= h >> 32
    h = (h * CT_FIN_MUL) & _M64
    h ^= h >> 29
    return reduce(h >> 32, buckets), ((h >> 8) & 0xFFFFFF) or 1


def ct_position_lookup3(
    saddr: str, daddr: str, sport: int, dport: int, proto: int, key: int, buckets: int
) -> tuple[int, int]:
    """ct_position of layouts 1 to 3 (lookup3's mix; layout 1 had key 0): where an older
    agent's pins hold a flow, for the migration."""
    k0, k1 = key & _M32, key >> 32 & _M32
    a = (HASH_INIT + _raw32(socket.inet_aton(saddr)) + k0) & _M32
    b = (HASH_INIT + _raw32(socket.inet_aton(daddr)) + k1) & _M32
    ports = _raw32(struct.pack("!HH", sport, dport))
    c = (HASH_INIT + ports + (proto << 24) + (k0 ^ k1)) & _M32
    a, b, c = _mix(a, b, c)
    return reduce(c, buckets), (b >> 8) or 1


def vipf_bit(vip: str) -> tuple[int, int]:
    """(word index, bit) of a VIP in the VIP filter."""
    h = ((int(ipaddress.IPv4Address(vip)) * VIPF_HASH_MUL) & _M32) >> 16
    return (h >> 6) % VIPF_WORDS, h & 63
