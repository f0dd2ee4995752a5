"""The benchmark report: every benchmark beside its baseline, in one run, into
bench/results/report.md (machine, versions, date) with PNG plots.

    .venv/bin/python bench/report.py [--quick] [--only maglev,xdp,conn,plane,reduce,disruption]

Sections (issue 6), each line with the target from its issue and whether it is met:
  1 maglev      table build, nodeagent.maglev vs a C reference compiled here (maglev_bench)
  2 xdp         per-packet cost by BPF_PROG_TEST_RUN vs a minimal program (xdp_bench, root)
  3 conn        new TCP connections/s and latency through the lab, Weir vs nftables DNAT
                (conn_bench, root)
  4 plane       one endpoint change acked by 200 agents (plane_bench); reduce     10,000
                Services reduce + serialize (reduce_bench)
  5 disruption  table slots that change when 1 of N backends leaves, vs the ideal 1/N
Benchmarks owned by other parts run as subprocesses and their printed results are parsed;
a section that fails is reported as failed, and the others still run. Bounded: about 4-6
minutes on 2 cores (--quick: about 2).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))  # the sibling bench modules


@dataclass
class Check:
    what: str
    value: str
    target: str
    met: bool | None  # None: no target, reported for comparison


@dataclass
class Section:
    title: str
    short: str = ""  # for the summary table
    body: list[str] = field(default_factory=list)  # markdown lines
    checks: list[Check] = field(default_factory=list)
    plot: str = ""
    seconds: float = 0.0
    error: str = ""


# -- helpers --------------------------------------------------------------------------------


def run_script(args: list[str], timeout: float) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode not in (0, 1):  # 1: ran, but a target was missed
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def save_plot(fig, name: str) -> str:
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=100)
    plt.close(fig)
    return name


def bars(ax, labels: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
    ax.legend()


# -- 1. Maglev build --------------------------------------------------------------------------


def maglev(quick: bool) -> Section:
    import maglev_bench as mb

    sec = Section(
        "1. Maglev table build: nodeagent.maglev vs a C reference (gcc -O2)", "1. Maglev build"
    )
    rng = random.Random(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="weir-report-maglev-") as tmp:
        work = Path(tmp)
        exe = mb.compile_ref(work)
        for n in (3, 10, 100, 1000):
            for m in (16381, 65537):
                budget = 0.05 if quick else 0.15
                rows.append(mb.measure(exe, work, mb.make_backends(n, rng), m, None, budget))
    sec.body = md_table(
        ["N", "M", "Weir (ms, min)", "C reference (ms, min)", "ratio", "same table"],
        [
            [str(r.n), str(r.m), f"{r.py_min * 1e3:.3f}", f"{r.ref_min * 1e3:.3f}",
             f"{r.py_min / r.ref_min:.2f}x", "yes" if r.same else "NO"]
            for r in rows
        ],
    )  # fmt: skip
    for r in rows:
        if (r.n, r.m) == mb.TARGET:
            ratio = r.py_min / r.ref_min
            sec.checks.append(
                Check(
                    f"build N={r.n}, M={r.m} vs C", f"{ratio:.2f}x",
                    f"<= {mb.TARGET_RATIO}x (issue 3)", ratio <= mb.TARGET_RATIO,
                )
            )  # fmt: skip
    sec.checks.append(
        Check("same table as the C reference", f"{sum(r.same for r in rows)}/{len(rows)}",
              "all (issue 3)", all(r.same for r in rows))
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 4))
    bars(
        ax,
        [f"N={r.n}\nM={r.m}" for r in rows],
        {"Weir": [r.py_min * 1e3 for r in rows], "C reference": [r.ref_min * 1e3 for r in rows]},
    )
    ax.set_yscale("log")
    ax.set_ylabel("ms per build (min)")
    ax.set_title("Maglev table build")
    sec.plot = save_plot(fig, "maglev.png")
    return sec


# -- 2. XDP per packet ------------------------------------------------------------------------

XDP_ROW = re.compile(
    r"^(minimal \(\+new-flow bump\)|minimal|empty program|non-VIP|tracked VIP flow|new VIP flow)"
    r"\s+(\d+)(?:\s+(\d+)\s+([\d.]+)\s+([\d.]+)x)?"
)


def xdp(quick: bool) -> Section:
    sec = Section(
        "2. XDP per-packet cost (BPF_PROG_TEST_RUN) vs a minimal XDP program", "2. XDP per packet"
    )
    args = ["bench/xdp_bench.py", "--repeat", "1000000", "--rounds", "3" if quick else "5"]
    out = run_script(args, timeout=240)
    ns: dict[str, int] = {}
    for line in out.splitlines():
        m = XDP_ROW.match(line)
        if not m:
            continue
        ns[m.group(1)] = int(m.group(2))
        if m.group(3):
            ratio, target = float(m.group(4)), float(m.group(5))
            sec.checks.append(
                Check(f"{m.group(1)}: {m.group(2)} ns vs {m.group(3)} ns", f"{ratio:.2f}x",
                      f"<= {target}x (issue 3)", ratio <= target)
            )  # fmt: skip
    if not sec.checks:
        raise RuntimeError(f"no results in xdp_bench's output:\n{out[-2000:]}")
    sec.body = ["```", *out.strip().splitlines(), "```"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(list(ns), list(ns.values()), color="tab:blue")
    ax.set_ylabel("ns per packet (best round)")
    ax.set_title("XDP per-packet cost")
    ax.tick_params(axis="x", labelrotation=20)
    sec.plot = save_plot(fig, "xdp.png")
    return sec


# -- 3. connections through the lab -----------------------------------------------------------


def conn(quick: bool) -> Section:
    import conn_bench

    sec = Section(
        "3. New TCP connections through the lab: Weir (XDP + DSR) vs nftables DNAT",
        "3. Connections",
    )
    results = conn_bench.run(
        rounds=2 if quick else 3, seconds=2 if quick else 3, progress=lambda _: None
    )
    base = results[0]
    sec.body = [
        "Client c1 -> router (ECMP over 3 LB nodes) -> 4 HTTP backends; one GET per new "
        "connection, 16 workers; the modes alternate round by round (medians shown). "
        "Client and servers are Python on the same 2 cores: the rate "
        "is bounded by them more than by the data path.",
        "",
        *md_table(
            ["mode", "connections", "errors", "conn/s (median)", "p50 ms", "p99 ms",
             "rate vs baseline", "conn/s per round"],
            [
                [r.mode, str(r.connections), str(r.errors), f"{r.rate:.0f}",
                 f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.rate / base.rate:.2f}x",
                 " ".join(map(str, r.rounds))]
                for r in results
            ],
        ),
    ]  # fmt: skip
    weir = results[1]
    sec.checks += [
        Check("Weir conn/s vs nftables DNAT", f"{weir.rate:.0f} vs {base.rate:.0f}/s "
              f"({weir.rate / base.rate:.2f}x)", "none in the issues (comparison)", None),
        Check("Weir p99 latency vs nftables DNAT", f"{weir.p99_ms:.1f} vs {base.p99_ms:.1f} ms",
              "none in the issues (comparison)", None),
        Check("connections failed (both modes)", str(sum(r.errors for r in results)), "0",
              all(r.errors == 0 for r in results)),
    ]  # fmt: skip
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = ["nftables DNAT", "Weir XDP"]
    a1.bar(names, [r.rate for r in results], color=["tab:gray", "tab:blue"])
    a1.set_ylabel("new connections / s")
    bars(a2, names, {"p50": [r.p50_ms for r in results], "p99": [r.p99_ms for r in results]})
    a2.set_ylabel("connect to answer, ms")
    fig.suptitle("New TCP connections through the lab")
    sec.plot = save_plot(fig, "conn.png")
    return sec


# -- 4. control plane -------------------------------------------------------------------------

PLANE_COLUMN = 44  # plane_bench prints the label left-aligned in 44 characters, then numbers
PLANE_NAMES = {
    "pipeline": "endpoint change -> 200 acks, no debounce",
    "default": "endpoint change -> 200 acks, default debounce",
}


def plane_labels() -> dict[str, str]:
    """plane_bench's row labels, as it prints them."""
    from weir.controller.core.publish import DEFAULT_DEBOUNCE

    return {
        "baseline": "baseline: store.publish -> 200 acks",
        "pipeline": "endpoint change -> 200 acks (debounce 0)",
        "default": f"endpoint change -> 200 acks (debounce {DEFAULT_DEBOUNCE * 1000:.0f} ms)",
    }


def plane(quick: bool) -> Section:
    sec = Section(
        "4a. Control plane: one endpoint change acked by all of 200 agents", "4a. 200 agents"
    )
    rounds = "15" if quick else "30"
    out = run_script(["bench/plane_bench.py", "--agents", "200", "--rounds", rounds], 300)
    labels = plane_labels()
    found: dict[str, tuple[float, float]] = {}  # mode -> (p50, p99) in ms
    for line in out.splitlines():
        for key, label in labels.items():
            if line[:PLANE_COLUMN].rstrip() == label and key not in found:
                cols = line[PLANE_COLUMN:].split()  # p50 p99 max ratio ratio
                found[key] = (float(cols[0]), float(cols[1]))
    if "pipeline" not in found:
        raise RuntimeError(f"no results in plane_bench's output:\n{out[-2000:]}")
    sec.body = ["```", *out.strip().splitlines()[-12:], "```"]
    for key in ("pipeline", "default"):
        if key in found:
            p50, p99 = found[key]
            sec.checks.append(
                Check(f"{PLANE_NAMES[key]}, p50 {p50:.1f} ms",
                      f"p99 {p99:.1f} ms", "p99 < 100 ms (issue 2)", p99 < 100)
            )  # fmt: skip
    if "baseline" in found:
        sec.checks.append(
            Check("baseline: publish -> 200 acks", f"p50 {found['baseline'][0]:.1f} ms, "
                  f"p99 {found['baseline'][1]:.1f} ms", "baseline", None)
        )  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 3.5))
    keys = [k for k in labels if k in found]
    bars(ax, keys, {"p50": [found[k][0] for k in keys], "p99": [found[k][1] for k in keys]})
    ax.axhline(100, color="red", linestyle="--", linewidth=1)
    ax.set_ylabel("ms until 200 agents acked")
    ax.set_title("One endpoint change to 200 agents (red: 100 ms target)")
    sec.plot = save_plot(fig, "plane.png")
    return sec


def reduce_(quick: bool) -> Section:
    sec = Section("4b. Control plane: reduce 10,000 Services x 20 endpoints", "4b. Reduce")
    out = run_script(["bench/reduce_bench.py", "--repeat", "1" if quick else "3"], 300)

    def seconds(prefix: str) -> float:
        for line in out.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :].split()[0])
        raise RuntimeError(f"{prefix!r} not in reduce_bench's output:\n{out[-2000:]}")

    cold = seconds("reduce + serialize (cold)")
    base = seconds("baseline json.loads of the input")
    full = seconds("parse + reduce + serialize (cold)")
    sec.body = ["```", *out.strip().splitlines(), "```"]
    sec.checks += [
        Check("reduce + serialize, cold", f"{cold:.3f} s ({cold / base:.2f}x json.loads)",
              "< 1 s (issue 2)", cold < 1.0),
        Check("parse + reduce + serialize, cold", f"{full:.3f} s", "baseline json.loads "
              f"{base:.3f} s", None),
    ]  # fmt: skip
    return sec


# -- 5. disruption ----------------------------------------------------------------------------


def disruption(quick: bool) -> Section:
    import numpy as np
    from weir.nodeagent.maglev import backend_id, build_table
    from weir.nodeagent.maglev import disruption as needless

    sec = Section(
        "5. Disruption: table slots that change when 1 of N backends leaves", "5. Disruption"
    )
    rng = random.Random(7)
    rows, plot_n, plot_changed = [], [], []
    samples = 3 if quick else 5
    for n in (3, 10, 100, 1000):
        for m in (16381, 65537):
            ids = [backend_id(f"10.0.{i >> 8}.{i & 255}", 80, "TCP") for i in range(n)]
            old = build_table(ids, m, seed=1)
            changed, extra = [], []
            for gone in rng.sample(range(n), min(samples, n)):
                rest = ids[:gone] + ids[gone + 1 :]
                new = build_table(rest, m, seed=1)
                old_names = np.array(ids)[old]
                new_names = np.array(rest)[new]
                changed.append(float(np.count_nonzero(old_names != new_names)) / m)
                extra.append(needless(old, ids, new, rest))
            mean_changed, worst_extra = statistics.mean(changed), max(extra)
            rows.append((n, m, mean_changed, 1 / n, statistics.mean(extra), worst_extra))
            if m == 65537:
                plot_n.append(n)
                plot_changed.append(mean_changed)
    sec.body = [
        "changed = slots whose backend differs after the removal (the removed backend's ~1/N "
        "must change); needless = slots moved between backends present before and after.",
        "",
        *md_table(
            ["N", "M", "changed (mean)", "ideal 1/N", "changed / ideal", "needless (mean)",
             "needless (worst)"],
            [
                [str(n), str(m), f"{c * 100:.3f}%", f"{i * 100:.3f}%", f"{c / i:.3f}x",
                 f"{e * 100:.3f}%", f"{w * 100:.3f}%"]
                for n, m, c, i, e, w in rows
            ],
        ),
    ]  # fmt: skip
    for n, m, c, i, _e, w in rows:
        if (n, m) == (100, 65537):
            sec.checks.append(
                Check(f"needless moves, N={n}, M={m} (worst of {samples})", f"{w * 100:.3f}%",
                      "well under 2% (issue 3)", w < 0.02)
            )  # fmt: skip
            sec.checks.append(
                Check(f"slots changed, N={n}, M={m}", f"{c * 100:.3f}%",
                      f"ideal 1/N = {i * 100:.2f}%", None)
            )  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.loglog(plot_n, plot_changed, "o-", label="Weir (M = 65537)")
    ax.loglog(plot_n, [1 / n for n in plot_n], "k--", label="ideal 1/N")
    ax.set_xlabel("backends N")
    ax.set_ylabel("share of slots changed")
    ax.set_title("One of N backends leaves")
    ax.legend()
    sec.plot = save_plot(fig, "disruption.png")
    return sec


SECTIONS: dict[str, Callable[[bool], Section]] = {
    "maglev": maglev,
    "xdp": xdp,
    "conn": conn,
    "plane": plane,
    "reduce": reduce_,
    "disruption": disruption,
}
NEEDS_ROOT = {"xdp", "conn"}


# -- the report -------------------------------------------------------------------------------


def machine() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("bcc", "grpc", "numpy"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except ImportError:
            versions[mod] = "not installed"
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"- CPU: {cpu}, {os.cpu_count()} cores",
        f"- kernel: {platform.release()}",
        f"- Python {platform.python_version()}, bcc {versions['bcc']}, "
        f"grpcio {versions['grpc']}, numpy {versions['numpy']}",
    ]


def verdict(c: Check) -> str:
    return "comparison" if c.met is None else ("**met**" if c.met else "**NOT met**")


def render(sections: list[Section], total: float, quick: bool) -> str:
    lines = ["# Weir benchmark report", "", *machine(), f"- run time: {total:.0f} s"
             + (" (--quick)" if quick else ""), "", "## Summary", ""]  # fmt: skip
    rows = []
    for s in sections:
        if s.error:
            rows.append([s.short or s.title, "failed to run", "", "**not run**"])
        rows += [[f"{s.short}: {c.what}", c.value, c.target, verdict(c)]
                 for c in s.checks]  # fmt: skip
    lines += md_table(["benchmark", "result", "target", "verdict"], rows)
    for s in sections:
        lines += ["", f"## {s.title}", "", f"({s.seconds:.0f} s)", ""]
        if s.error:
            lines += ["Failed:", "", "```", s.error[-3000:], "```"]
            continue
        lines += s.body
        if s.plot:
            lines += ["", f"![{s.title}]({s.plot})"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (about 2 minutes)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = ap.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    RESULTS.mkdir(exist_ok=True)
    t0 = time.monotonic()
    sections = []
    for name in wanted:
        print(f"[bench] {name} ...", flush=True)
        t = time.monotonic()
        if name in NEEDS_ROOT and os.geteuid() != 0:
            sec = Section(f"{name}: needs root", error="needs root (BPF, network namespaces)")
        else:
            try:
                sec = SECTIONS[name](args.quick)
            except Exception as exc:  # a failed section is reported; the others still run
                sec = Section(f"{name}: failed", error=f"{type(exc).__name__}: {exc}")
        sec.seconds = time.monotonic() - t
        for c in sec.checks:
            print(f"[bench]   {c.what}: {c.value} (target {c.target}: {verdict(c)})", flush=True)
        if sec.error:
            print(f"[bench]   FAILED: {sec.error[-500:]}", flush=True)
        sections.append(sec)
    report = render(sections, time.monotonic() - t0, args.quick)
    (RESULTS / "report.md").write_text(report)
    print(f"[bench] wrote {RESULTS / 'report.md'} in {time.monotonic() - t0:.0f} s")
    missed = [c.what for s in sections for c in s.checks if c.met is False]
    if missed:
        print(f"[bench] {len(missed)} target(s) not met: {'; '.join(missed)}")
    # The exit status says whether every benchmark ran; missed targets are results.
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
