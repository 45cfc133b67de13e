"""The validation report: a CSV of every comparison, a CSV and a Markdown summary over
scenarios (absolute and signed errors, per metric and per phase) and a plot.

A signed error shows bias where an absolute one shows only size: a cost model that leaves out
work the executor does under-predicts in every scenario, and the median signed error, the
count of under-predicted scenarios and the per-phase table say so and where.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moesim.validate.compare import MetricRow, phase_of
from moesim.validate.report_plots import plot_replays, plot_report
from moesim.validate.serving import ReplayRow

__all__ = ["HEADLINE", "LOAD_DIFFERENCE", "Report", "headline", "phase_summary", "summarise"]

HEADLINE = "latency_p50_s"  # the metric the report's first line sums up

# Mean 1-minute load averages this far apart (runnable processes) mean that calibration and
# the reference runs competed with different work for the cores.
LOAD_DIFFERENCE = 1.0


@dataclass
class Report:
    """What a validation run found; ``skipped`` maps a scenario to why it did not run. The
    loads are the machine's 1-minute load average before and after calibration (None when the
    profile was given) and the reference runs."""

    rows: list[MetricRow]
    device: str
    profile: str
    repeats: int
    date: str
    skipped: dict[str, str] = field(default_factory=dict)
    replays: list[ReplayRow] = field(default_factory=list)
    calibration_load: tuple[float, float] | None = None
    reference_load: tuple[float, float] | None = None

    def notes(self) -> list[str]:
        """What a reader must know to trust the errors: no spread, different machine load."""
        notes = []
        if self.repeats == 1:
            notes.append("one repeat of each real run: no spread to read the errors against")
        if self.calibration_load is not None and self.reference_load is not None:
            calibration = sum(self.calibration_load) / 2
            reference = sum(self.reference_load) / 2
            if abs(calibration - reference) >= LOAD_DIFFERENCE:
                notes.append(
                    f"machine load differed: {calibration:.2f} during calibration, "
                    f"{reference:.2f} during the reference runs (1-minute load average); "
                    "timing errors may come from the load, not the model"
                )
        return notes

    @property
    def mismatches(self) -> list[MetricRow]:
        return [row for row in self.rows if not row.matches]

    def write(self, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "report.csv", out / "summary.csv", out / "report.md", out / "report.png"]
        _write_csv(self.rows, paths[0])
        _write_summary(self.rows, paths[1])
        paths[2].write_text(self.markdown())
        plot_report(self.rows, paths[3])
        replay = [out / "replay.csv", out / "replay.png"]
        for path in replay:
            path.unlink(missing_ok=True)  # an earlier report's
        if self.replays:
            _write_replays(self.replays, replay[0])
            plot_replays(self.replays, replay[1])
            paths += replay
        return paths

    def markdown(self) -> str:
        lines = [
            "# moesim validation: predicted vs measured",
            "",
            f"- device: {self.device}",
            f"- profile: {self.profile}",
            f"- repetitions of each real run: {self.repeats} (measured = their median)",
            f"- date: {self.date}",
            f"- machine load (1-minute average, before and after): calibration "
            f"{_load(self.calibration_load)}, reference runs {_load(self.reference_load)}",
            *(f"- NOTE: {note}" for note in self.notes()),
            "",
            "error = (predicted - measured) / measured, signed (negative: predicted too low); "
            "spread = (max - min) / median of the measured repetitions.",
            *_serving_note(self.rows),
            *(["", summary] if (summary := headline(self.rows)) else []),
            "",
            "## Summary over scenarios",
            "",
            "| metric | scenarios | median abs error | median error | max abs error | "
            "under-predicted | median spread |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for metric, stats in summarise(self.rows).items():
            lines.append(
                f"| {metric} | {stats['scenarios']} | {_pct(stats['median_abs_error'])} | "
                f"{_signed(stats['median_error'])} | {_pct(stats['max_abs_error'])} | "
                f"{stats['under_predicted']} | {_pct(stats['median_spread'])} |"
            )
        exact = [row for row in self.rows if row.kind == "exact"]
        matched = sum(row.matches for row in exact)
        lines += ["", f"Exact accounting metrics: {matched} of {len(exact)} match.", ""]
        for row in self.mismatches:
            lines.append(
                f"- MISMATCH {row.scenario} {row.metric}: predicted {row.predicted:g}, "
                f"measured {row.measured:g}"
            )
        lines += _phase_lines(self.rows)
        if self.skipped:
            lines += ["", "## Not run", ""]
            lines += [f"- {why}" for _, why in sorted(self.skipped.items())]
        lines += _replay_lines(self.replays)
        lines += ["", "## Per scenario", ""]
        by_scenario: dict[str, list[MetricRow]] = defaultdict(list)
        for row in self.rows:
            by_scenario[row.scenario].append(row)
        for scenario, rows in by_scenario.items():
            lines += [
                f"### {scenario}",
                "",
                "| metric | predicted | measured | error | spread |",
                "|---|---:|---:|---:|---:|",
            ]
            for row in rows:
                error = "exact" if row.kind == "exact" and row.matches else _signed(row.error)
                lines.append(
                    f"| {row.metric} | {row.predicted:.4g} | {row.measured:.4g} | {error} | "
                    f"{_pct(row.spread)} |"
                )
            lines.append("")
        lines.append("![predicted vs measured](report.png)")
        return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    if math.isinf(value):
        return "inf (measured 0)"
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _signed(value: float) -> str:
    if math.isinf(value):
        return "+inf (measured 0)"
    return "n/a" if math.isnan(value) else f"{100 * value:+.1f}%"


def _load(load: tuple[float, float] | None) -> str:
    return "not measured (profile given)" if load is None else f"{load[0]:.2f} -> {load[1]:.2f}"


def summarise(rows: list[MetricRow]) -> dict[str, dict[str, float]]:
    """Per timing or memory metric, over the scenarios that have it: their count; the median
    and largest absolute error; the median, smallest and largest signed error; how many are
    under-predicted (error < 0); the median spread."""
    grouped: dict[str, list[MetricRow]] = defaultdict(list)
    for row in rows:
        if row.kind != "exact" and not math.isnan(row.error):
            grouped[row.metric].append(row)
    summary: dict[str, dict[str, float]] = {}
    for metric, group in grouped.items():
        errors = np.array([r.error for r in group])
        summary[metric] = {
            "scenarios": len(group),
            "median_abs_error": float(np.median(np.abs(errors))),
            "max_abs_error": float(np.abs(errors).max()),
            "median_error": float(np.median(errors)),
            "min_error": float(errors.min()),
            "max_error": float(errors.max()),
            "under_predicted": int(np.count_nonzero(errors < 0)),
            "median_spread": float(np.median([r.spread for r in group])),
        }
    return summary


def phase_summary(rows: list[MetricRow]) -> dict[str, dict[str, float]]:
    """``summarise`` of the per-phase metrics, keyed by phase (``expert``, ``replay_expert``)."""
    return {
        phase: stats
        for metric, stats in summarise(rows).items()
        if (phase := phase_of(metric)) is not None
    }


def headline(rows: list[MetricRow]) -> str | None:
    """One line on p50 step latency over scenarios: median absolute and signed error, how many
    are under-predicted, the largest absolute error and where; None without such rows."""
    stats = summarise(rows).get(HEADLINE)
    if stats is None:
        return None
    group = [r for r in rows if r.metric == HEADLINE and not math.isnan(r.error)]
    worst = max(group, key=lambda r: r.abs_error)
    return (
        f"**p50 step latency** over {stats['scenarios']} scenarios: median |error| "
        f"{_pct(stats['median_abs_error'])}, median signed error "
        f"{_signed(stats['median_error'])} ({stats['under_predicted']} of "
        f"{stats['scenarios']} under-predicted), max |error| {_pct(stats['max_abs_error'])} "
        f"({worst.scenario})."
    )


def _phase_lines(rows: list[MetricRow]) -> list[str]:
    phases = phase_summary(rows)
    if not phases:
        return []
    lines = [
        "",
        "## Per phase",
        "",
        "Each phase's time per step over scenarios; signed error, negative where the phase is "
        "predicted too short. A phase whose errors all share a sign, beyond the spread, is a "
        "bias of the cost model, not noise.",
        "",
        "| phase | scenarios | median error | median abs error | min error | max error | "
        "under-predicted | median spread |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, stats in phases.items():
        lines.append(
            f"| {phase} | {stats['scenarios']} | {_signed(stats['median_error'])} | "
            f"{_pct(stats['median_abs_error'])} | {_signed(stats['min_error'])} | "
            f"{_signed(stats['max_error'])} | {stats['under_predicted']} | "
            f"{_pct(stats['median_spread'])} |"
        )
    return lines


def _write_csv(rows: list[MetricRow], path: Path) -> None:
    """One row per comparison: the original columns, then ``abs_error`` and ``phase`` (empty
    for a metric that is not a phase's time)."""
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "scenario",
                "metric",
                "kind",
                "predicted",
                "measured",
                "error",
                "spread",
                "abs_error",
                "phase",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.scenario,
                    r.metric,
                    r.kind,
                    r.predicted,
                    r.measured,
                    r.error,
                    r.spread,
                    r.abs_error,
                    r.phase or "",
                ]
            )


_SUMMARY_COLUMNS = (
    "scenarios",
    "median_error",
    "median_abs_error",
    "min_error",
    "max_error",
    "max_abs_error",
    "under_predicted",
    "median_spread",
)


def _write_summary(rows: list[MetricRow], path: Path) -> None:
    """``summarise`` as a CSV: one row per timing or memory metric, its phase if it has one."""
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["metric", "phase", *_SUMMARY_COLUMNS])
        for metric, stats in summarise(rows).items():
            phase = phase_of(metric) or ""
            writer.writerow([metric, phase, *(stats[name] for name in _SUMMARY_COLUMNS)])


def _serving_note(rows: list[MetricRow]) -> list[str]:
    if not any(row.metric == "requests_completed" for row in rows):
        return []
    return [
        "",
        "Serving scenarios: `ttft`, `tpot`, `e2e`, `output_tokens_per_s` and `latency` (per "
        "step) come from the requests served in real time by the reference (each repetition "
        "a fresh run of the same arrivals), `replay_*` from the simulator's step plans "
        "replayed on it; requests completed and tokens processed must match.",
    ]


def _replay_lines(replays: list[ReplayRow]) -> list[str]:
    if not replays:
        return []
    lines = [
        "",
        "## Serving replay: step latency, one to one",
        "",
        "The reference ran the simulator's step plans back to back (the same requests, new "
        "tokens and contexts in each step, in the same order); error = (predicted - measured) "
        "/ measured of each step's latency, measured = the median of the repeats. Per step: "
        "`replay.csv` in each scenario's folder; plot: `replay.png`.",
        "",
        "| scenario | steps | replayed exactly | median abs error | median error | "
        "p90 abs error | median spread | predicted total | measured total | total error |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in replays:
        exact = "yes" if r.token_mismatches == 0 else f"NO ({r.token_mismatches} steps differ)"
        lines.append(
            f"| {r.scenario} | {r.steps} | {exact} | {_pct(r.median_abs_error)} | "
            f"{_pct(r.median_error)} | {_pct(r.p90_abs_error)} | {_pct(r.median_spread)} | "
            f"{r.predicted_s:.3f} s | {r.measured_s:.3f} s | {_signed(r.total_error)} |"
        )
    return lines


def _write_replays(replays: list[ReplayRow], path: Path) -> None:
    names = [
        "scenario",
        "steps",
        "measured_steps",
        "token_mismatches",
        "median_abs_error",
        "median_error",
        "p90_abs_error",
        "median_spread",
        "predicted_s",
        "measured_s",
        "total_error",
    ]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(names)
        for row in replays:
            writer.writerow([getattr(row, name) for name in names])
