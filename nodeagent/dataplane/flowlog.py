"""The flow log: the XDP program's sampled decisions, read from its pinned ring buffer.

The fast path writes a FlowRecord for 1 in N VIP packets (DataplaneConfig.flow_sample,
bpf/weir_maps.h `flow_log`). A ring buffer has one consumer: the agent (nodeagent.flows)
reads it and serves the decisions to `weirctl flows`. Records name the backend by handle;
decisions() resolves it against the backends map at read time (a backend retired since
still has its entry, until its index is reused: then `backend` is "").
current() says whether the pin still names the ring this reader reads: when the data plane's
maps are made anew, the reader must be opened again (the old ring gets nothing any more).
"""

from __future__ import annotations

import ctypes as ct
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from weir.common import protocols
from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.model import DataplaneError
from weir.nodeagent.dataplane.pinned import ip_of, port_of

XDP_ACTIONS = ("aborted", "drop", "pass", "tx", "redirect")

_SAMPLE_FN = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)


@dataclass(frozen=True)
class FlowDecision:
    time: float  # Unix time
    client: str
    client_port: int
    vip: str
    port: int
    protocol: str
    how: str  # layout.FLOW_HOW
    slot: int  # new flows by Maglev or affinity: the slot's index in the service's table
    backend: str  # "address:port", "" when none
    backend_node: str  # encapsulated: the backend's node; "" for L2 DSR
    action: str  # XDP action: tx, pass, drop
    drop: str  # the drop reason, "" when not dropped
    icmp: bool  # an ICMP error about the flow
    first_fragment: bool
    untracked: bool  # a new flow that made no conntrack entry

    @property
    def service_id(self) -> str:
        return f"{self.vip}:{self.port}/{self.protocol}"


class FlowLogReader:
    """The pinned ring buffer under a data plane's bpffs directory (one reader at a time)."""

    def __init__(self, bpffs: Path) -> None:
        self._raw: list[bytes] = []
        self._rb: int | None = None
        size = ct.sizeof(layout.FlowRecord)

        def sample(_ctx: int | None, data: int | None, length: int) -> int:
            if data and length >= size:
                self._raw.append(ct.string_at(data, size))
            return 0

        self._callback = _SAMPLE_FN(sample)  # kept: libbpf calls it until free
        self._fd = self._backends = -1
        self._pin = Path(bpffs) / layout.FLOW_LOG
        try:
            self._fd = bpfsys.obj_get(str(self._pin))
            self._backends = bpfsys.obj_get(str(Path(bpffs) / "backends"))
            self._id = bpfsys.map_info(self._fd).id
        except OSError as exc:
            self.close()
            raise DataplaneError(f"no flow log under {bpffs}: {exc}") from exc
        lib = bpfsys.lib()
        lib.ring_buffer__new.restype = ct.c_void_p
        lib.ring_buffer__new.argtypes = [ct.c_int, _SAMPLE_FN, ct.c_void_p, ct.c_void_p]
        lib.ring_buffer__poll.argtypes = [ct.c_void_p, ct.c_int]
        lib.ring_buffer__free.argtypes = [ct.c_void_p]
        self._rb = lib.ring_buffer__new(self._fd, self._callback, None, None)
        if not self._rb:
            self.close()
            raise DataplaneError(f"cannot read the flow log: {os.strerror(ct.get_errno())}")

    def close(self) -> None:
        if self._rb:
            bpfsys.lib().ring_buffer__free(self._rb)
            self._rb = None
        for fd in (self._fd, self._backends):
            if fd >= 0:
                os.close(fd)
        self._fd = self._backends = -1

    def current(self) -> bool:
        """True while the pin names the ring this reader reads."""
        try:
            fd = bpfsys.obj_get(str(self._pin))
        except OSError:
            return False  # unpinned: a new one comes with the next data plane
        try:
            return bpfsys.map_info(fd).id == self._id
        finally:
            os.close(fd)

    def poll(self, timeout_ms: int) -> list[FlowDecision]:
        """The decisions logged since the last poll, waiting up to timeout_ms for one."""
        ret = bpfsys.lib().ring_buffer__poll(self._rb, timeout_ms)
        if ret < 0 and -ret != 4:  # EINTR: poll again
            raise DataplaneError(f"reading the flow log: {os.strerror(-ret)}")
        raw, self._raw = self._raw, []
        # bpf_ktime_get_ns is CLOCK_MONOTONIC: Unix time by the offset of the clocks now.
        offset = time.time() - time.monotonic_ns() / 1e9
        return [self._decision(layout.FlowRecord.from_buffer_copy(r), offset) for r in raw]

    def _decision(self, rec: layout.FlowRecord, offset: float) -> FlowDecision:
        backend = node = ""
        if rec.handle:
            entry = layout.Backend()
            index = rec.handle & layout.BE_INDEX_MASK
            if bpfsys.lookup(self._backends, ct.c_uint32(index), entry):
                backend = f"{ip_of(entry.addr_be)}:{port_of(entry.port_be)}"
                if entry.flags & layout.BE_F_ENCAP:
                    node = ip_of(entry.node_be)
        return FlowDecision(
            time=offset + rec.time_ns / 1e9,
            client=ip_of(rec.saddr_be),
            client_port=socket.ntohs(rec.sport_be),
            vip=ip_of(rec.daddr_be),
            port=socket.ntohs(rec.dport_be),
            protocol=protocols.name_of(rec.proto),
            how=layout.FLOW_HOW[rec.how] if rec.how < len(layout.FLOW_HOW) else str(rec.how),
            slot=rec.slot,
            backend=backend,
            backend_node=node,
            action=XDP_ACTIONS[rec.action] if rec.action < len(XDP_ACTIONS) else str(rec.action),
            drop=layout.DROP_REASONS[rec.drop - 1] if rec.drop else "",
            icmp=bool(rec.flags & layout.FLOW_F_ICMP),
            first_fragment=bool(rec.flags & layout.FLOW_F_FIRST_FRAG),
            untracked=bool(rec.flags & layout.FLOW_F_UNTRACKED),
        )
