"""Traffic over time as a small chart: one row per backend or LB node, one column per
interval between two samples of cumulative counters (the agents' Prometheus counters), each
cell the row's share of that interval's traffic, and the row's share of the whole story.

    render("new flows per LB node", samples, ["lb1", "lb2", "lb3"], marks)

Plain text, at most `width` columns (100 by default: a row's name is cut to 6 characters,
a large total shortened to 12.3M); png() draws the same with matplotlib when it is
installed (it is not a dependency: without it there is no picture).
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LEVELS = " ▁▂▃▄▅▆▇█"
NAME = 6  # columns for a row's name
TOTAL = 16  # columns for a row's total: "  12345  33.3%"


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the story began
    counters: Mapping[str, Mapping[str, float]]  # row name -> series -> cumulative value


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    counts: Mapping[str, float]  # what each row counted in it


def intervals(samples: Sequence[Sample]) -> list[Interval]:
    """What each row counted between consecutive samples: the increase of each of its
    series, as Prometheus' increase() has it. A series counts from its second sample (one
    that appears, or goes, adds nothing: a backend removed takes its counters along); one
    that went down was reset (its agent restarted) and counts its new value. A value that
    is NaN or infinite (a broken exporter) is taken as no sample of its series."""
    out = []
    for a, b in itertools.pairwise(samples):
        counts = {}
        for name, series in b.counters.items():
            before = a.counters.get(name, {})
            counts[name] = sum(
                (v - before[k] if v >= before[k] else v)
                for k, v in series.items()
                if k in before and math.isfinite(v) and math.isfinite(before[k])
            )
        out.append(Interval(a.t, b.t, counts))
    return out


def totals(spans: Sequence[Interval], names: Sequence[str]) -> dict[str, float]:
    return {n: sum(s.counts.get(n, 0.0) for s in spans) for n in names}


def _columns(spans: Sequence[Interval], columns: int) -> list[list[Interval]]:
    """The intervals grouped into at most `columns` consecutive groups of equal size."""
    if not spans:
        return []
    per = -(-len(spans) // columns)  # ceiling
    return [list(spans[i : i + per]) for i in range(0, len(spans), per)]


def render(
    title: str,
    samples: Sequence[Sample],
    names: Sequence[str],
    marks: Sequence[tuple[float, str]] = (),
    width: int = 100,
) -> str:
    """The chart as text lines (see the module docstring); marks (t, label) show under the
    columns where the story's steps began."""
    spans = intervals(samples)
    groups = _columns(spans, max(1, width - NAME - TOTAL - 3))
    lines = [f"   {title[: width - 3]}"]
    whole = totals(spans, names)
    grand = sum(whole.values()) or 1.0
    for name in names:
        cells = ""
        for group in groups:
            counts = totals(group, names)
            share = counts[name] / (sum(counts.values()) or 1.0)
            cells += LEVELS[round(share * (len(LEVELS) - 1))] if sum(counts.values()) else "·"
        lines.append(
            f"   {name[:NAME]:<{NAME}}{cells} {_count(whole[name]):>7} "
            f"{100 * whole[name] / grand:5.1f}%"
        )
    if groups:
        axis = [" "] * len(groups)
        for t, label in marks:
            # Under the column the step began in, or the next free one (steps closer
            # together than a column share it).
            i = next((k for k, g in enumerate(groups) if g[-1].end > t), len(groups) - 1)
            while i < len(axis) - 1 and axis[i] != " ":
                i += 1
            axis[i] = label[:1] or "|"
        start, end = groups[0][0].start, groups[-1][-1].end
        lines.append(f"   {'':<{NAME}}{''.join(axis)} {start:.0f}-{end:.0f} s")
    return "\n".join(lines)


def _count(value: float) -> str:
    """A total in at most 7 characters: 1234567, then 12.3M, 4.5G, ..."""
    for scale, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= 1e7 and value >= scale:
            return f"{value / scale:.1f}{unit}"[:7]
    return f"{value:.0f}"


def png(
    path: Path,
    charts: Sequence[tuple[str, Sequence[Sample], Sequence[str]]],
    marks: Sequence[tuple[float, str]] = (),
) -> bool:
    """The charts as stacked areas of each row's rate, in one PNG; False without matplotlib."""
    try:
        importlib.import_module("matplotlib").use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    fig, axes = plt.subplots(len(charts), 1, figsize=(10, 3 * len(charts)), squeeze=False)
    for ax, (title, samples, names) in zip(axes[:, 0], charts, strict=True):
        spans = intervals(samples)
        xs = [s.end for s in spans]
        rates = [[s.counts.get(n, 0.0) / max(s.end - s.start, 1e-9) for s in spans] for n in names]
        ax.stackplot(xs, rates, labels=list(names), step="pre")
        for t, label in marks:
            ax.axvline(t, color="grey", linewidth=0.5)
            ax.text(t, 0, label, fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("s")
        ax.set_ylabel("per second")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
