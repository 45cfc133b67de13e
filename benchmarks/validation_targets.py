"""Issue #12's accuracy targets, checked on the folders that ``moesim validate --out`` wrote.

    python benchmarks/validation_targets.py DIR [DIR...]

For each report folder, a Markdown table: on one rank, the median |error| of p50 step latency
(target <= 5 %); on two or more ranks, the largest |error| against each scenario's run-to-run
spread (each within max(10 %, its spread)); the median signed error over every scenario
(within +-3 %); each phase's signed error on one rank (every scenario within +-15 %); the
accounting metrics (exact). Ranks come from each scenario's ``predicted.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.validate.compare import MetricRow

__all__ = ["Check", "PhaseCheck", "checks", "phase_checks", "ranks", "read_rows"]

LATENCY = "latency_p50_s"
ONE_RANK_ABS = 0.05
MULTI_RANK_ABS = 0.10  # or the scenario's run-to-run spread, if larger
MEDIAN_SIGNED = 0.03
PHASE_SIGNED = 0.15


@dataclass(frozen=True)
class Check:
    """One target: what it measures, the figure found, the goal, whether it is met (None: no
    scenario to judge it on)."""

    target: str
    figure: str
    goal: str
    met: bool | None


@dataclass(frozen=True)
class PhaseCheck:
    """One phase's signed error over the one-rank scenarios that have it."""

    phase: str
    scenarios: int
    median_error: float
    min_error: float
    max_error: float
    within: int  # scenarios within +-PHASE_SIGNED

    @property
    def met(self) -> bool:
        return self.within == self.scenarios


def read_rows(folder: Path) -> list[MetricRow]:
    """The comparisons of ``folder/report.csv`` (any version of its columns)."""
    with (folder / "report.csv").open(newline="") as stream:
        return [
            MetricRow(
                row["scenario"],
                row["metric"],
                row["kind"],  # type: ignore[arg-type]
                float(row["predicted"]),
                float(row["measured"]),
                float(row["spread"]),
                float(row["error"]),
            )
            for row in csv.DictReader(stream)
        ]


def ranks(folder: Path) -> dict[str, int]:
    """Ranks per scenario label: by the scenario folder's name and by the scenario's name."""
    found: dict[str, int] = {}
    for path in sorted(folder.glob("*/predicted.json")):
        result = json.loads(path.read_text())
        found[path.parent.name] = result["gpus"]
        found.setdefault(result["scenario"], result["gpus"])
    return found


def _pct(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"


def checks(rows: list[MetricRow], gpus: dict[str, int]) -> list[Check]:
    """The four latency and accounting targets on ``rows``, ``gpus`` ranks per scenario."""
    latency = [r for r in rows if r.metric == LATENCY and not math.isnan(r.error)]
    one = [r for r in latency if gpus.get(r.scenario) == 1]
    multi = [r for r in latency if gpus.get(r.scenario, 0) > 1]
    found = []
    if one:
        median = float(np.median([r.abs_error for r in one]))
        figure, met = f"{_pct(median)} ({len(one)} scenarios)", median <= ONE_RANK_ABS
    else:
        figure, met = "no one-rank scenario", None
    found.append(
        Check("p50 step latency, one rank: median abs error", figure, f"<= {ONE_RANK_ABS:.0%}", met)
    )
    if multi:
        worst = max(multi, key=lambda r: r.abs_error)
        within = sum(
            r.abs_error <= max(MULTI_RANK_ABS, 0.0 if math.isnan(r.spread) else r.spread)
            for r in multi
        )
        spread = float(np.nanmedian([r.spread for r in multi]))
        figure = (
            f"max {_pct(worst.abs_error)} ({worst.scenario}, spread {_pct(worst.spread)}); "
            f"median spread {_pct(spread)}; {within} of {len(multi)} within"
        )
        met = within == len(multi)
    else:
        figure, met = "no scenario on two or more ranks", None
    goal = f"each <= max({MULTI_RANK_ABS:.0%}, its spread)"
    found.append(Check("p50 step latency, two or more ranks: abs error", figure, goal, met))
    if latency:
        median = float(np.median([r.error for r in latency]))
        under = sum(r.error < 0 for r in latency)
        figure = f"{_pct(median, signed=True)} ({under} of {len(latency)} under-predicted)"
        met = abs(median) <= MEDIAN_SIGNED
    else:
        figure, met = "no scenario", None
    found.append(
        Check(
            "p50 step latency, all: median signed error",
            figure,
            f"within +-{MEDIAN_SIGNED:.0%}",
            met,
        )
    )
    exact = [r for r in rows if r.kind == "exact"]
    matched = sum(r.matches for r in exact)
    found.append(
        Check(
            "accounting metrics exact",
            f"{matched} of {len(exact)} match",
            "all",
            matched == len(exact) if exact else None,
        )
    )
    return found


def phase_checks(rows: list[MetricRow], gpus: dict[str, int]) -> list[PhaseCheck]:
    """Each phase's signed error over the one-rank scenarios, in the order rows name them."""
    errors: dict[str, list[float]] = {}
    for r in rows:
        if r.phase is not None and gpus.get(r.scenario) == 1 and not math.isnan(r.error):
            errors.setdefault(r.phase, []).append(r.error)
    return [
        PhaseCheck(
            phase,
            len(values),
            float(np.median(values)),
            min(values),
            max(values),
            sum(abs(v) <= PHASE_SIGNED for v in values),
        )
        for phase, values in errors.items()
    ]


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def table(folder: Path) -> str:
    """The targets of one report folder, as Markdown."""
    rows, gpus = read_rows(folder), ranks(folder)
    scenarios = sorted({r.scenario for r in rows})
    one = sum(gpus.get(s) == 1 for s in scenarios)
    unknown = [s for s in scenarios if s not in gpus]
    lines = [
        f"## {folder}: {len(scenarios)} scenarios, {one} on one rank, "
        f"{len(scenarios) - one - len(unknown)} on more",
        "",
        "| target | figure | goal | met |",
        "|---|---|---|---|",
        *(f"| {c.target} | {c.figure} | {c.goal} | {_met(c.met)} |" for c in checks(rows, gpus)),
    ]
    if unknown:
        lines += ["", f"Ranks unknown (no predicted.json), left out: {', '.join(unknown)}."]
    phases = phase_checks(rows, gpus)
    if phases:
        lines += [
            "",
            f"Per phase on one rank (signed error; goal: every scenario within "
            f"+-{PHASE_SIGNED:.0%}):",
            "",
            "| phase | scenarios | median error | min error | max error | within | met |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {p.phase} | {p.scenarios} | {_pct(p.median_error, True)} | "
            f"{_pct(p.min_error, True)} | {_pct(p.max_error, True)} | {p.within} | "
            f"{_met(p.met)} |"
            for p in phases
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not (f / "report.csv").is_file()]
    if missing:
        print(f"no report.csv in: {', '.join(missing)}", file=sys.stderr)
        return 2
    print("\n".join(table(folder) for folder in args.folders), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
