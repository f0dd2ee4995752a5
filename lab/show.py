"""Terminal output for the lab: steps, a progress bar, share bars and a summary table."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence

BAR = 30


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def note(text: str) -> None:
    print(f"   {text}", flush=True)


class Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.tty = sys.stdout.isatty()
        self.t0 = time.monotonic()
        self.last_line = -1

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            filled = BAR * self.done // self.total
            print(
                f"\r   {self.label} [{'#' * filled}{'.' * (BAR - filled)}] "
                f"{self.done}/{self.total}",
                end="",
                flush=True,
            )
        elif (quarter := 4 * self.done // self.total) != self.last_line:
            self.last_line = quarter
            print(f"   {self.label}: {self.done}/{self.total}", flush=True)

    def finish(self) -> None:
        if self.tty:
            print(f"  {time.monotonic() - self.t0:.1f} s", flush=True)


def shares(title: str, counts: Mapping[str, int], names: Sequence[str]) -> None:
    total = sum(counts.values()) or 1
    print(f"   {title}")
    for name in names:
        n = counts.get(name, 0)
        width = round(BAR * n / total)
        print(f"     {name:<4} {'█' * width:<{BAR}} {n:>6}  {100 * n / total:5.1f}%")


def table(rows: Sequence[tuple[str, str, str]]) -> None:
    headers = ("check", "result", "")
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(3)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"+{line}+")
    for r in (headers, *rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if r is headers:
            print(f"+{line}+")
    print(f"+{line}+")
