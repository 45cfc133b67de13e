"""The validation report: a CSV of every comparison, a Markdown summary and a plot."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moesim.validate.compare import MetricRow
from moesim.validate.serving import ReplayRow

__all__ = ["LOAD_DIFFERENCE", "Report", "summarise"]

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
        paths = [out / "report.csv", out / "report.md", out / "report.png"]
        _write_csv(self.rows, paths[0])
        paths[1].write_text(self.markdown())
        _plot(self.rows, paths[2])
        replay = [out / "replay.csv", out / "replay.png"]
        for path in replay:
            path.unlink(missing_ok=True)  # an earlier report's
        if self.replays:
            _write_replays(self.replays, replay[0])
            _plot_replays(self.replays, replay[1])
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
            "error = (predicted - measured) / measured; spread = (max - min) / median of the "
            "measured repetitions.",
            *_serving_note(self.rows),
            "",
            "## Summary over scenarios",
            "",
            "| metric | scenarios | median abs error | max abs error | median spread |",
            "|---|---:|---:|---:|---:|",
        ]
        for metric, stats in summarise(self.rows).items():
            lines.append(
                f"| {metric} | {stats['scenarios']} | {_pct(stats['median_abs_error'])} | "
                f"{_pct(stats['max_abs_error'])} | {_pct(stats['median_spread'])} |"
            )
        exact = [row for row in self.rows if row.kind == "exact"]
        matched = sum(row.matches for row in exact)
        lines += ["", f"Exact accounting metrics: {matched} of {len(exact)} match.", ""]
        for row in self.mismatches:
            lines.append(
                f"- MISMATCH {row.scenario} {row.metric}: predicted {row.predicted:g}, "
                f"measured {row.measured:g}"
            )
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
                error = "exact" if row.kind == "exact" and row.matches else _pct(row.error)
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


def _load(load: tuple[float, float] | None) -> str:
    return "not measured (profile given)" if load is None else f"{load[0]:.2f} -> {load[1]:.2f}"


def summarise(rows: list[MetricRow]) -> dict[str, dict[str, float]]:
    """Per timing or memory metric: scenarios, median and max absolute error, median spread."""
    grouped: dict[str, list[MetricRow]] = defaultdict(list)
    for row in rows:
        if row.kind != "exact" and not math.isnan(row.error):
            grouped[row.metric].append(row)
    return {
        metric: {
            "scenarios": len(group),
            "median_abs_error": float(np.median([abs(r.error) for r in group])),
            "max_abs_error": float(max(abs(r.error) for r in group)),
            "median_spread": float(np.median([r.spread for r in group])),
        }
        for metric, group in grouped.items()
    }


def _write_csv(rows: list[MetricRow], path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["scenario", "metric", "kind", "predicted", "measured", "error", "spread"])
        for r in rows:
            writer.writerow(
                [r.scenario, r.metric, r.kind, r.predicted, r.measured, r.error, r.spread]
            )


def _plot(rows: list[MetricRow], path: Path) -> None:
    """Left: predicted against measured p50 step latency per scenario (the diagonal is a
    perfect prediction). Right: each phase's error per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    latency = [r for r in rows if r.metric == "latency_p50_s"]
    phases = [r for r in rows if r.metric.endswith("_s_per_step") and not math.isnan(r.error)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    if latency:
        measured = np.array([r.measured for r in latency]) * 1e3
        predicted = np.array([r.predicted for r in latency]) * 1e3
        left.errorbar(
            measured,
            predicted,
            xerr=np.nan_to_num(np.array([r.spread for r in latency])) * measured / 2,
            fmt="o",
        )
        low, high = (
            min(measured.min(), predicted.min()) * 0.8,
            max(measured.max(), predicted.max()) * 1.2,
        )
        left.plot([low, high], [low, high], "k--", linewidth=1, label="prediction = measurement")
        for band in (0.9, 1.1):
            left.plot([low, high], [low * band, high * band], "k:", linewidth=0.8)
        left.set_xscale("log")
        left.set_yscale("log")
        for axis in (left.xaxis, left.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(ScalarFormatter())
        left.legend(title="dotted: within 10%")
    left.set_xlabel("measured p50 step latency (ms)")
    left.set_ylabel("predicted p50 step latency (ms)")
    left.set_title("step latency")
    scenarios = sorted({r.scenario for r in phases})
    names = sorted({r.metric for r in phases})
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        errors = {r.scenario: r.error for r in phases if r.metric == name}
        x = np.arange(len(scenarios)) + i * width
        right.bar(x, [100 * errors.get(s, 0.0) for s in scenarios], width, label=name[:-11])
    right.axhline(0, color="k", linewidth=0.8)
    right.set_xticks(np.arange(len(scenarios)) + 0.4 - width / 2)
    right.set_xticklabels(scenarios, rotation=60, ha="right", fontsize=7)
    right.set_ylabel("error of the phase's time per step (%)")
    right.set_title("time breakdown")
    if names:
        right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
        "p90 abs error | median spread | predicted total | measured total |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in replays:
        exact = "yes" if r.token_mismatches == 0 else f"NO ({r.token_mismatches} steps differ)"
        lines.append(
            f"| {r.scenario} | {r.steps} | {exact} | {_pct(r.median_abs_error)} | "
            f"{_pct(r.median_error)} | {_pct(r.p90_abs_error)} | {_pct(r.median_spread)} | "
            f"{r.predicted_s:.3f} s | {r.measured_s:.3f} s |"
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
    ]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(names)
        for row in replays:
            writer.writerow([getattr(row, name) for name in names])


def _plot_replays(replays: list[ReplayRow], path: Path) -> None:
    """Each replayed step: predicted against measured latency, one colour per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    figure, axis = plt.subplots(figsize=(6.5, 5.5))
    low, high = np.inf, 0.0
    for row in replays:
        measured, predicted = row.measured_N * 1e3, row.predicted_N * 1e3
        axis.scatter(measured, predicted, s=6, alpha=0.5, label=row.scenario)
        low = min(low, measured.min(), predicted.min())
        high = max(high, measured.max(), predicted.max())
    if np.isfinite(low):
        span = [low * 0.8, high * 1.2]
        axis.plot(span, span, "k--", linewidth=1, label="prediction = measurement")
        for band in (0.9, 1.1):
            axis.plot(span, [v * band for v in span], "k:", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_yscale("log")
    for scale in (axis.xaxis, axis.yaxis):
        scale.set_major_formatter(ScalarFormatter())
        scale.set_minor_formatter(ScalarFormatter())
    axis.set_xlabel("measured step latency (ms)")
    axis.set_ylabel("predicted step latency (ms)")
    axis.set_title("serving replay: every step, one to one (dotted: within 10%)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
