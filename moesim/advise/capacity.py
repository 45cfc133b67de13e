"""A candidate's capacity: the highest arrival rate at which the serving simulation meets the
SLO, found by bracketing from the screen's estimate and bisecting (geometrically) until the
bracket is within the tolerance; with a target rate, also the replicas that serve it and the
run at each replica's share (raised until that run meets the SLO, so that the advice is a run
that does)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim import api
from moesim.advise.spec import override, point_overrides
from moesim.config import MAX_REQUESTS, load_scenario
from moesim.errors import ConfigError, MoesimError
from moesim.sweep import Point

__all__ = ["MIN_REQUESTS", "CapacitySettings", "at_percentile", "rate_overrides", "search_capacity"]

MIN_REQUESTS = 20  # a percentile needs some requests however low the rate
_STEP = 1.25  # bracketing factor: the calibrated estimate is usually within it
_BRACKET_PROBES = 22  # 1.25^22 = 135x either way from the estimate
_MORE_REPLICAS = 8


@dataclass(frozen=True)
class CapacitySettings:
    """``fixed`` overrides (the SLO), the traffic's duration per run, the tolerance, the
    objective's rate (None: maximise) and each candidate's starting rate by id."""

    fixed: tuple[str, ...]
    duration_s: float
    tolerance: float
    target_rate: float | None
    starts: dict[str, float] = field(default_factory=dict)


def at_percentile(values: np.ndarray, finished: np.ndarray, percentile: float) -> float:
    """The nearest-rank percentile over arrived requests, an unfinished one counting as
    infinite (as ``slo_met`` judges); NaN where no request has the value."""
    filled = np.where(np.isnan(values) & ~finished, np.inf, values)
    filled = np.sort(filled[~np.isnan(filled)])
    if not filled.size:
        return math.nan
    return float(filled[max(math.ceil(percentile / 100 * filled.size) - 1, 0)])


def rate_overrides(rate: float, duration_s: float) -> list[str]:
    """A run at ``rate`` requests/s for ``duration_s`` of traffic."""
    count = min(max(math.ceil(rate * duration_s), MIN_REQUESTS), MAX_REQUESTS)
    return [override("workload.requests.arrival.rate", rate), f"workload.requests.count={count}"]


def _probe(base: str, overrides: list[str], rate: float, duration_s: float) -> dict[str, Any]:
    scenario = load_scenario(base, [*overrides, *rate_overrides(rate, duration_s)])
    result, records = api.run(scenario)
    serving, requests = result.serving, records.serving.requests
    slo = scenario.slo
    finished = np.isfinite(requests.finish_s)
    mean_tpot = serving.tpot_s.mean
    return {
        "rate": rate,
        "slo_met": bool(serving.slo_met),
        "ttft_p99_s": serving.ttft_s.p99,
        "tpot_p99_s": serving.tpot_s.p99,
        "ttft_at_percentile_s": at_percentile(requests.ttft_s, finished, slo.percentile),
        "tpot_at_percentile_s": at_percentile(requests.tpot_s, finished, slo.percentile),
        "tokens_per_s_per_gpu": serving.output_tokens_per_s / scenario.cluster.gpus,
        "tokens_per_s_per_user": 1.0 / mean_tpot if mean_tpot else 0.0,
        "goodput_requests_per_s": serving.goodput_requests_per_s,
    }


class _Prober:
    """Probes one candidate, each rate once."""

    def __init__(self, base: str, overrides: list[str], duration_s: float) -> None:
        self.base, self.overrides, self.duration_s = base, overrides, duration_s
        self.runs: dict[float, dict[str, Any]] = {}

    def met(self, rate: float) -> bool:
        if rate not in self.runs:
            self.runs[rate] = _probe(self.base, self.overrides, rate, self.duration_s)
        return self.runs[rate]["slo_met"]


def _capacity(prober: _Prober, start: float, tolerance: float) -> float:
    """The highest rate found to meet the SLO (0 when none down to start / 1.25^22)."""
    if prober.met(start):
        low, high = start, None
        for _ in range(_BRACKET_PROBES):
            if not prober.met(low * _STEP):
                high = low * _STEP
                break
            low *= _STEP
        if high is None:
            return low
    else:
        low, high = None, start
        for _ in range(_BRACKET_PROBES):
            if prober.met(high / _STEP):
                low = high / _STEP
                break
            high /= _STEP
        if low is None:
            return 0.0
    while high / low > 1 + tolerance:
        middle = math.sqrt(low * high)
        if prober.met(middle):
            low = middle
        else:
            high = middle
    return low


def search_capacity(
    settings: CapacitySettings, base: str, point: Point, point_id: str
) -> dict[str, Any]:
    """A candidate's capacity search (a worker task: never raises)."""
    prober = _Prober(base, [*settings.fixed, *point_overrides(point)], settings.duration_s)
    row: dict[str, Any] = {"point_id": point_id}
    try:
        capacity = _capacity(prober, settings.starts[point_id], settings.tolerance)
        replicas, at_rate = None, capacity
        if settings.target_rate is not None and capacity > 0:
            replicas = math.ceil(settings.target_rate / capacity * (1 - 1e-12))
            for _ in range(_MORE_REPLICAS):
                at_rate = settings.target_rate / replicas
                if prober.met(at_rate):
                    break
                replicas += 1
            else:
                replicas = None
    except api.OutOfMemoryError as error:
        return row | {"status": "out_of_memory", "error": str(error)}
    except ConfigError as error:  # what serving refuses when it runs
        room = "no room for a KV cache" in error.message
        status = "out_of_memory" if room else "unsupported"
        return row | {"status": status, "error": f"{error.message} (serving)"}
    except MoesimError as error:
        return row | {"status": "error", "error": " ".join(str(error).split())}
    except Exception as error:  # a candidate's failure is its row; the search goes on
        return row | {"status": "error", "error": f"{type(error).__name__}: {error}"}
    target = prober.runs.get(at_rate) if capacity > 0 else prober.runs[min(prober.runs)]
    return row | {
        "status": "ok" if capacity > 0 and (replicas or settings.target_rate is None) else "miss",
        "error": "",
        "capacity_rps": capacity,
        "replicas": replicas,
        "at_rate_rps": target["rate"],
        "probes": json.dumps([prober.runs[rate] for rate in sorted(prober.runs)]),
    }
