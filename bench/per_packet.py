"""A per-packet figure of a BPF program against its baseline (the XDP and tc benches)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PacketRow:
    case: str
    ns: int  # per packet, best round
    baseline: str = ""  # the program it is compared with ("" for the baselines themselves)
    baseline_ns: int = 0
    target: float = 0.0  # at most this ratio to the baseline (0: reported, no target)

    @property
    def ratio(self) -> float:
        return self.ns / self.baseline_ns

    @property
    def met(self) -> bool:
        return not self.target or self.ratio <= self.target
