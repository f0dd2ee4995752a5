"""Validate what apply_service is given and bring it to one canonical form with a tag.

Canonical: backends sorted by (address, port, mac) and the table renumbered to match,
so the same service content always has the same tag, whatever order it came in. The tag
is kept in the pinned maps: a restarted agent compares against it, so how it is computed
must not change between versions.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
from weir.common import protocols
from weir.nodeagent.dataplane.layout import (
    STRATEGY_MAGLEV,
    STRATEGY_RANDOM,
    SVC_ID_LEN,
    SVC_SIZE_MASK,
    SvcKey,
)
from weir.nodeagent.dataplane.model import BackendTarget, DataplaneError
from weir.nodeagent.service import Frontend


@dataclass(frozen=True, eq=False)
class CanonicalService:
    """A service as the maps will hold it."""

    frontend: Frontend
    key: bytes  # struct svc_key bytes
    backends: tuple[BackendTarget, ...]  # canonical order
    table: numpy.ndarray  # uint32 indices into backends; empty when there are none
    tag: bytes  # 16 bytes

    @property
    def size(self) -> int:
        return len(self.table)

    @property
    def strategy_code(self) -> int:
        return STRATEGY_RANDOM if self.frontend.strategy == "random" else STRATEGY_MAGLEV


def svc_key_bytes(vip: str, port: int, protocol: int) -> bytes:
    key = SvcKey()
    key.vip_be = int.from_bytes(socket.inet_aton(vip), sys.byteorder)
    key.port_be = socket.htons(port)
    key.proto = protocol
    return bytes(key)


def _ipv4(address: str, what: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise DataplaneError(f"{what} {address!r} is not an IP address") from None
    if ip.version != 4:
        raise DataplaneError(f"{what} {address}: IPv6 is not supported by this data plane yet")
    return ip


def canonicalise(
    fe: Frontend, backends: Sequence[BackendTarget], table: numpy.ndarray | Sequence[int]
) -> CanonicalService:
    """Raise DataplaneError (with the service id) for anything the maps cannot hold."""
    where = f"service {fe.id}"
    if not fe.id or len(fe.id.encode()) >= SVC_ID_LEN:
        raise DataplaneError(f"{where}: id must be 1..{SVC_ID_LEN - 1} bytes")
    _ipv4(fe.vip, f"{where}: VIP")
    if fe.protocol not in protocols.DATAPLANE:
        known = " or ".join(f"{protocols.name_of(n)} ({n})" for n in sorted(protocols.DATAPLANE))
        raise DataplaneError(f"{where}: protocol {fe.protocol} is not {known}")
    if not 1 <= fe.port <= 65535:
        raise DataplaneError(f"{where}: port {fe.port} is out of range")
    if fe.strategy not in ("maglev", "random"):
        raise DataplaneError(f"{where}: strategy {fe.strategy!r} is not maglev or random")
    if fe.affinity not in ("none", "client_ip"):
        raise DataplaneError(f"{where}: affinity {fe.affinity!r} is not none or client_ip")
    for b in backends:
        _ipv4(b.address, f"{where}: backend")
        if not 0 <= b.port <= 65535:
            raise DataplaneError(f"{where}: backend port {b.port} is out of range")
        if len(b.mac) != 6:
            raise DataplaneError(f"{where}: backend {b.address} MAC must be 6 bytes")
        if b.node:
            _ipv4(b.node, f"{where}: backend {b.address} node")
    order = sorted(range(len(backends)), key=lambda i: _sort_key(backends[i]))
    canonical = tuple(backends[i] for i in order)
    if len(set(canonical)) != len(canonical):
        raise DataplaneError(f"{where}: the same backend is listed twice")

    if canonical:
        arr = numpy.asarray(table)
        if arr.ndim != 1 or not len(arr) or arr.dtype.kind not in "iu":
            raise DataplaneError(f"{where}: table must be a non-empty 1-D integer array")
        if len(arr) > SVC_SIZE_MASK:
            raise DataplaneError(f"{where}: table size {len(arr)} exceeds {SVC_SIZE_MASK}")
        if arr.min() < 0 or arr.max() >= len(canonical):
            raise DataplaneError(f"{where}: table names backends outside 0..{len(canonical) - 1}")
        renumber = numpy.empty(len(canonical), dtype=numpy.uint32)
        renumber[numpy.asarray(order)] = numpy.arange(len(canonical), dtype=numpy.uint32)
        canon_table = renumber[arr]
    else:
        canon_table = numpy.zeros(0, dtype=numpy.uint32)

    h = hashlib.blake2b(digest_size=16)
    h.update(repr((fe.id, fe.vip, fe.port, fe.protocol, fe.strategy, fe.affinity)).encode())
    for b in canonical:
        # L2 DSR backends hash as they always have (tags in pinned maps stay valid).
        ident = (
            (b.address, b.port, b.mac.hex(), b.node) if b.node else (b.address, b.port, b.mac.hex())
        )
        h.update(repr(ident).encode())
    h.update(canon_table.tobytes())
    return CanonicalService(
        frontend=fe,
        key=svc_key_bytes(fe.vip, fe.port, fe.protocol),
        backends=canonical,
        table=canon_table,
        tag=h.digest(),
    )


def _sort_key(b: BackendTarget) -> tuple[int, int, bytes, int]:
    return (int(ipaddress.ip_address(b.address)), b.port, b.mac, _node_rank(b.node))


def _node_rank(node: str) -> int:
    return int(ipaddress.ip_address(node)) + 1 if node else 0
