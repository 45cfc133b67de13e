"""Serving validation: the simulator's prediction of a serving scenario against the reference
executor serving the same requests in real time, and a replay of the simulator's exact step
plans on the reference, step latency compared one to one.

Real time: TTFT, TPOT and E2E percentiles, output throughput and step latency are timing
metrics (the median of the repeats); requests completed and tokens processed come from the
same scheduler on both sides and must match. Replay: the reference runs the steps the
simulator ran, the same plans in the same order, so step ``n`` of one is step ``n`` of the
other: the error of each step's latency is summarised by its median absolute and median
signed value; the step count and every step's tokens must match.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moesim.config import Scenario
from moesim.metrics import PHASES, Result, StepRecords
from moesim.policies import plan_placement
from moesim.reference import Replay, replay_steps, serve
from moesim.sim.serving import simulate_serving
from moesim.sim.serving_groups import kv_cache
from moesim.validate.compare import Kind, MetricRow, compare_values
from moesim.workload import request_table

__all__ = ["ReplayRow", "ServingRun", "replay_row", "run_serving", "serving_metric_values"]


@dataclass(frozen=True)
class ReplayRow:
    """One scenario's replay: steps the simulator ran and the reference ran, steps whose
    tokens differ (0 when it replayed exactly), the per-step latency error ``(predicted -
    measured) / measured`` as median absolute, median signed and 90th-percentile absolute
    value, the median spread of a step over the repeats, and the total of the steps' latencies
    on either side (``total_error``: its signed error)."""

    scenario: str
    steps: int
    measured_steps: int
    token_mismatches: int
    median_abs_error: float
    median_error: float
    p90_abs_error: float
    median_spread: float
    predicted_s: float
    measured_s: float
    predicted_N: np.ndarray = field(repr=False, compare=False)  # per step, for the plot
    measured_N: np.ndarray = field(repr=False, compare=False)

    @property
    def total_error(self) -> float:
        """``(predicted - measured) / measured`` of the replayed steps' total latency (as
        ``compare``: +inf where only the prediction is 0)."""
        if not self.measured_s:
            return 0.0 if self.predicted_s == 0 else math.copysign(math.inf, self.predicted_s)
        return (self.predicted_s - self.measured_s) / self.measured_s


def serving_metric_values(result: Result) -> dict[str, tuple[Kind, float]]:
    """The compared metrics of a serving result."""
    serving = result.serving
    if serving is None:
        raise ValueError(f"{result.scenario} is not a serving result")
    values: dict[str, tuple[Kind, float]] = {}
    for name in ("ttft", "tpot", "e2e"):
        spread = getattr(serving, f"{name}_s")
        for q in ("p50", "p99"):
            value = getattr(spread, q)
            values[f"{name}_{q}_s"] = ("timing", math.nan if value is None else value)
    values["output_tokens_per_s"] = ("timing", serving.output_tokens_per_s)
    values["latency_p50_s"] = ("timing", result.latency_s.p50)
    values["latency_p99_s"] = ("timing", result.latency_s.p99)
    values["requests_completed"] = ("exact", serving.completed)
    values["tokens_processed"] = ("exact", result.tokens.processed)
    return values


def replay_row(scenario: str, predicted: StepRecords, measured: list[StepRecords]) -> ReplayRow:
    """The one-to-one comparison of the simulator's steps with the replays' (their median)."""
    latency_RN = np.stack([m.latency_s for m in measured])
    steps = min(predicted.latency_s.size, latency_RN.shape[1])
    median_N = np.median(latency_RN[:, :steps], axis=0)
    error_N = (predicted.latency_s[:steps] - median_N) / median_N
    spread_N = np.ptp(latency_RN[:, :steps], axis=0) / median_N if len(measured) > 1 else None
    mismatches = int(np.count_nonzero(predicted.tokens[:steps] != measured[0].tokens[:steps]))
    mismatches += abs(predicted.latency_s.size - latency_RN.shape[1])
    return ReplayRow(
        scenario=scenario,
        steps=int(predicted.latency_s.size),
        measured_steps=int(latency_RN.shape[1]),
        token_mismatches=mismatches,
        median_abs_error=float(np.median(np.abs(error_N))),
        median_error=float(np.median(error_N)),
        p90_abs_error=float(np.percentile(np.abs(error_N), 90)),
        median_spread=math.nan if spread_N is None else float(np.median(spread_N)),
        predicted_s=float(predicted.latency_s.sum()),
        measured_s=float(median_N.sum()),
        predicted_N=predicted.latency_s[:steps],
        measured_N=median_N,
    )


def _replay_phases(
    scenario: str, predicted: StepRecords, measured: list[StepRecords]
) -> list[MetricRow]:
    """Each phase's mean time per replayed step, predicted against measured."""
    expected = {
        f"replay_{phase}_s_per_step": ("timing", float(predicted.breakdown_NP[:, p].mean()))
        for p, phase in enumerate(PHASES)
    }
    expected["replay_latency_mean_s"] = ("timing", float(predicted.latency_s.mean()))
    runs = [
        {
            **{
                f"replay_{phase}_s_per_step": ("timing", float(m.breakdown_NP[:, p].mean()))
                for p, phase in enumerate(PHASES)
            },
            "replay_latency_mean_s": ("timing", float(m.latency_s.mean())),
        }
        for m in measured
    ]
    return compare_values(scenario, expected, runs)


@dataclass(frozen=True)
class ServingRun:
    """A serving scenario validated: its metric rows and its replay."""

    rows: list[MetricRow]
    replay: ReplayRow | None
    device: str


def _write_steps(path: Path, predicted: StepRecords, measured: list[StepRecords]) -> None:
    """Per replayed step: its tokens, the predicted and each measured latency."""
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "step",
                "tokens",
                "predicted_s",
                *(f"measured_{r + 1}_s" for r in range(len(measured))),
            ]
        )
        for n in range(predicted.latency_s.size):
            latencies = [m.latency_s[n] if n < m.latency_s.size else math.nan for m in measured]
            writer.writerow([n, int(predicted.tokens[n]), predicted.latency_s[n], *latencies])


def run_serving(
    scenario: Scenario,
    label: str,
    folder: Path,
    *,
    repeats: int,
    device: str,
    warmup: int,
    replay: bool,
    dump: Callable[[Path, Result], None],
    on_run: Callable[[], None],
) -> ServingRun:
    """Simulate ``scenario``, serve it for real ``repeats`` times and (``replay``) replay the
    simulator's plans ``repeats`` times in one launch; the results and the replayed steps
    (``replay.csv``) go into ``folder``; ``on_run()`` after each of these runs."""
    plans: Replay = []
    records = simulate_serving(scenario, on_plans=lambda step, steps: plans.append((step, steps)))
    predicted = Result.from_records(records)
    dump(folder / "predicted.json", predicted)
    on_run()
    blocks_G = kv_cache(scenario, plan_placement(scenario), request_table(scenario)).blocks_A
    measured = []
    for repeat in range(repeats):
        result = Result.from_records(serve(scenario, blocks_G, device=device, warmup=warmup))
        dump(folder / f"measured-{repeat + 1}.json", result)
        measured.append(result)
        on_run()
    expected = serving_metric_values(predicted)
    rows = compare_values(label, expected, [serving_metric_values(m) for m in measured])
    (folder / "replay.csv").unlink(missing_ok=True)  # an earlier run's, not this one's
    if not replay:
        return ServingRun(rows, None, measured[0].device)
    replayed = replay_steps(
        scenario, blocks_G, plans, repeats=repeats, device=device, warmup=warmup
    )
    on_run()
    _write_steps(folder / "replay.csv", records.steps, replayed)
    rows += _replay_phases(label, records.steps, replayed)
    return ServingRun(rows, replay_row(label, records.steps, replayed), measured[0].device)
