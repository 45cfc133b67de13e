"""Predicted against measured, metric by metric.

Timing and memory metrics are compared with the median over the reference's repetitions; their
spread is ``(max - min) / median`` over those repetitions, so an error can be read against the
machine's own noise. Accounting metrics (tokens, cache hits and misses, load imbalance, bytes
moved) come out of the same policy code on both sides and must match exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from moesim.metrics import PHASES, Result

__all__ = [
    "EXACT_METRICS",
    "TOLERABLE",
    "Kind",
    "MetricRow",
    "compare",
    "compare_values",
    "metric_values",
    "phase_of",
]

Kind = Literal["timing", "memory", "exact"]
PHASE_SUFFIX = "_s_per_step"  # a phase's time per step: ``expert_s_per_step``
EXACT_METRICS = (
    "tokens_processed",
    "tokens_dropped",
    "tokens_padded",
    "cache_hits",
    "cache_misses",
    "load_imbalance",
    "alltoall_bytes",
    "requests_completed",
)


# what --tolerance may name: each timing and memory metric, or a whole kind
TOLERABLE = (
    "timing",
    "memory",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p99_s",
    "throughput_tokens_per_s",
    *(f"{phase}{PHASE_SUFFIX}" for phase in PHASES),
    "peak_bytes",
    "weights_bytes",
    "kv_cache_bytes",
    "activation_peak_bytes",
    # serving: requests served in real time, and the replay of the simulator's steps
    *(f"{name}_{q}_s" for name in ("ttft", "tpot", "e2e") for q in ("p50", "p99")),
    "output_tokens_per_s",
    "replay_latency_mean_s",
    *(f"replay_{phase}{PHASE_SUFFIX}" for phase in PHASES),
)


def phase_of(metric: str) -> str | None:
    """The phase a per-phase metric times (``expert`` of ``expert_s_per_step``,
    ``replay_expert`` of the serving replay's ``replay_expert_s_per_step``); None otherwise."""
    return metric.removesuffix(PHASE_SUFFIX) if metric.endswith(PHASE_SUFFIX) else None


@dataclass(frozen=True)
class MetricRow:
    scenario: str
    metric: str
    kind: Kind
    predicted: float
    measured: float
    spread: float  # NaN from a single repeat
    error: float  # (predicted - measured) / measured; +-inf where only the prediction is 0

    @property
    def matches(self) -> bool:
        """Exact metrics: equal (to rounding); others: always true."""
        if self.kind != "exact":
            return True
        return math.isclose(self.predicted, self.measured, rel_tol=1e-9, abs_tol=1e-9)

    @property
    def abs_error(self) -> float:
        return abs(self.error)

    @property
    def phase(self) -> str | None:
        return phase_of(self.metric)


def metric_values(result: Result) -> dict[str, tuple[Kind, float]]:
    """The compared metrics of one result; per-phase times are seconds per step."""
    steps = max(result.steps, 1)
    memory = result.memory
    values: dict[str, tuple[Kind, float]] = {
        "latency_mean_s": ("timing", result.latency_s.mean),
        "latency_p50_s": ("timing", result.latency_s.p50),
        "latency_p99_s": ("timing", result.latency_s.p99),
        "throughput_tokens_per_s": ("timing", result.throughput_tokens_per_s),
    }
    for phase in PHASES:
        values[f"{phase}{PHASE_SUFFIX}"] = ("timing", result.time_breakdown_s[phase] / steps)
    values |= {
        "peak_bytes": ("memory", max(memory.peak_bytes_per_device)),
        "weights_bytes": ("memory", max(memory.weights_bytes_per_device)),
        "kv_cache_bytes": ("memory", max(memory.kv_cache_bytes_per_device)),
        "activation_peak_bytes": ("memory", max(memory.activation_peak_bytes_per_device)),
        "tokens_processed": ("exact", result.tokens.processed),
        "tokens_dropped": ("exact", result.tokens.dropped),
        "tokens_padded": ("exact", result.tokens.padded),
        "load_imbalance": ("exact", result.load_imbalance or 0.0),
        "alltoall_bytes": ("exact", result.alltoall_bytes),
    }
    if result.cache is not None:
        values["cache_hits"] = ("exact", result.cache.hits)
        values["cache_misses"] = ("exact", result.cache.misses)
    return values


def compare(
    predicted: Result, measured: list[Result], scenario: str | None = None
) -> list[MetricRow]:
    """One row per metric that is non-zero on either side, labelled ``scenario`` (default: the
    predicted result's scenario name); one repeat has no spread (NaN)."""
    return compare_values(
        scenario or predicted.scenario,
        metric_values(predicted),
        [metric_values(result) for result in measured],
    )


def compare_values(
    scenario: str,
    expected: dict[str, tuple[Kind, float]],
    runs: list[dict[str, tuple[Kind, float]]],
) -> list[MetricRow]:
    """``compare`` on metric values already taken: the prediction's and each repeat's."""
    rows = []
    for metric, (kind, value) in expected.items():
        samples = np.array([run[metric][1] for run in runs], dtype=np.float64)
        median = float(np.median(samples))
        if value == 0 and median == 0 and kind != "exact":
            continue
        if samples.size < 2:
            spread = math.nan
        else:
            spread = float(np.ptp(samples) / median) if median else 0.0
        if median:
            error = (value - median) / median
        else:  # nothing measured: exact if nothing predicted, else infinitely wrong
            error = 0.0 if value == 0 else math.copysign(math.inf, value)
        rows.append(MetricRow(scenario, metric, kind, float(value), median, spread, error))
    return rows
