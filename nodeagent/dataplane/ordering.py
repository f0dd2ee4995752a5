"""The two primitives that make table changes atomic for packets.

commit(): atomic 64-bit stores into the maps, done by the weir_commit program run with
BPF_PROG_TEST_RUN (userspace map updates are memcpy: not atomic for a reader).

GraceBarrier.wait(): an RCU grace period. Updating an ARRAY_OF_MAPS from userspace
makes the bpf syscall call synchronize_rcu() before returning (kernel/bpf/syscall.c,
maybe_wait_bpf_programs, in every kernel since 5.0 at the latest; the kernel's own
selftests, prog_tests/btf_map_in_map.c, use it the same way): it returns once every
XDP program run that started before the call has finished. After it, nothing read
before the call (an old table word, a retired backend entry, a deleted service
element) is still in use by a packet, so it may be rewritten.
"""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Sequence

from weir.nodeagent.dataplane import bpfsys, layout
from weir.nodeagent.dataplane.model import DataplaneError


def commit(prog_fd: int, ops: Sequence[tuple[int, int, int]]) -> None:
    """Apply (op, key, value) triples in order, COMMIT_MAX_OPS per program run."""
    for start in range(0, len(ops), layout.COMMIT_MAX_OPS):
        chunk = ops[start : start + layout.COMMIT_MAX_OPS]
        buf = (layout.CommitOp * len(chunk))()
        for slot, (op, key, value) in zip(buf, chunk, strict=True):
            slot.op, slot.key, slot.value = op, key, value
        run = bpfsys.test_run(prog_fd, bytes(buf), out_size=ct.sizeof(buf))
        done = (layout.CommitOp * len(chunk)).from_buffer_copy(run.data_out[: ct.sizeof(buf)])
        missed = [(o.op, o.key) for o in done if not o.done]
        if missed:
            raise DataplaneError(f"commit ops not applied (element missing?): {missed[:5]}")


class GraceBarrier:
    """Waits for a full RCU grace period (see module docstring)."""

    def __init__(self) -> None:
        self._inner = bpfsys.map_create_array(4, 1, "weir_gp_inner")
        try:
            self._outer = bpfsys.map_create_array_of_maps(self._inner, 1, "weir_gp")
        except OSError:
            os.close(self._inner)
            raise
        self.waits = 0

    def wait(self) -> None:
        bpfsys.update(self._outer, ct.c_uint32(0), ct.c_uint32(self._inner))
        self.waits += 1

    def close(self) -> None:
        os.close(self._outer)
        os.close(self._inner)
