"""The validation report's figures: predicted against measured step latency, each phase's
signed error per scenario and over scenarios, and the serving replay step by step."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from moesim.validate.compare import MetricRow
from moesim.validate.serving import ReplayRow

__all__ = ["PHASE_BAND", "plot_replays", "plot_report"]

PHASE_BAND = 0.15  # the dotted band of the per-phase panel: issue #12's target on one rank


def _log_axes(axis) -> None:
    from matplotlib.ticker import ScalarFormatter

    axis.set_xscale("log")
    axis.set_yscale("log")
    for scale in (axis.xaxis, axis.yaxis):
        scale.set_major_formatter(ScalarFormatter())
        scale.set_minor_formatter(ScalarFormatter())


def _diagonal(axis, low: float, high: float) -> None:
    span = [low * 0.8, high * 1.2]
    axis.plot(span, span, "k--", linewidth=1, label="prediction = measurement")
    for band in (0.9, 1.1):
        axis.plot(span, [v * band for v in span], "k:", linewidth=0.8)


def plot_report(rows: list[MetricRow], path: Path) -> None:
    """Left: predicted against measured p50 step latency per scenario (the diagonal is a
    perfect prediction). Middle: each phase's signed error per scenario. Right: each phase's
    signed errors over scenarios, their median marked (dotted: +-15 %). An infinite error
    (nothing measured) is left out of both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = [r for r in rows if r.metric == "latency_p50_s"]
    phases = [r for r in rows if r.phase is not None and math.isfinite(r.error)]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    if latency:
        measured = np.array([r.measured for r in latency]) * 1e3
        predicted = np.array([r.predicted for r in latency]) * 1e3
        left.errorbar(
            measured,
            predicted,
            xerr=np.nan_to_num(np.array([r.spread for r in latency])) * measured / 2,
            fmt="o",
        )
        _diagonal(left, min(measured.min(), predicted.min()), max(measured.max(), predicted.max()))
        _log_axes(left)
        left.legend(title="dotted: within 10%")
    left.set_xlabel("measured p50 step latency (ms)")
    left.set_ylabel("predicted p50 step latency (ms)")
    left.set_title("step latency")
    scenarios = sorted({r.scenario for r in phases})
    names = sorted({r.phase for r in phases if r.phase is not None})
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        errors = {r.scenario: r.error for r in phases if r.phase == name}
        x = np.arange(len(scenarios)) + i * width
        middle.bar(x, [100 * errors.get(s, 0.0) for s in scenarios], width, label=name)
    middle.axhline(0, color="k", linewidth=0.8)
    middle.set_xticks(np.arange(len(scenarios)) + 0.4 - width / 2)
    middle.set_xticklabels(scenarios, rotation=60, ha="right", fontsize=7)
    middle.set_ylabel("error of the phase's time per step (%)")
    middle.set_title("time breakdown, per scenario")
    if names:
        middle.legend(fontsize=7)
    for x, name in enumerate(names):
        errors = [100 * r.error for r in phases if r.phase == name]
        right.scatter([x] * len(errors), errors, s=12, alpha=0.6)
        if errors:
            right.plot([x - 0.3, x + 0.3], [np.median(errors)] * 2, "k-", linewidth=2)
    right.axhline(0, color="k", linewidth=0.8)
    for band in (-PHASE_BAND, PHASE_BAND):
        right.axhline(100 * band, color="k", linestyle=":", linewidth=0.8)
    right.set_xticks(np.arange(len(names)))
    right.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    right.set_ylabel("signed error over scenarios (%); bar: median")
    right.set_title(f"bias per phase (dotted: +-{100 * PHASE_BAND:.0f}%)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_replays(replays: list[ReplayRow], path: Path) -> None:
    """Each replayed step: predicted against measured latency, one colour per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 5.5))
    low, high = np.inf, 0.0
    for row in replays:
        measured, predicted = row.measured_N * 1e3, row.predicted_N * 1e3
        axis.scatter(measured, predicted, s=6, alpha=0.5, label=row.scenario)
        low = min(low, measured.min(), predicted.min())
        high = max(high, measured.max(), predicted.max())
    if np.isfinite(low):
        _diagonal(axis, low, high)
    _log_axes(axis)
    axis.set_xlabel("measured step latency (ms)")
    axis.set_ylabel("predicted step latency (ms)")
    axis.set_title("serving replay: every step, one to one (dotted: within 10%)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
