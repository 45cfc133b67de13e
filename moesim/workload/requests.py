"""The requests of a serving run: arrival times and lengths, drawn from the scenario or a trace.

Legend: ``R`` requests. Every draw comes from one generator spawned from the scenario seed with
spawn key ``(4,)`` (keys 0-3 belong to routing and buffering), in a fixed order: arrival gaps,
then prompt lengths, then output lengths, so the same scenario gives the same table bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import Scenario
from moesim.config.serving import MAX_REQUEST_TOKENS, ArrivalSpec, LengthSpec

__all__ = ["REQUEST_STREAM", "Requests", "arrival_times", "draw_lengths", "request_table"]

REQUEST_STREAM = 4  # spawn key of the requests' generator


@dataclass(frozen=True)
class Requests:
    """Columns of ``R`` requests, by arrival: ``arrival_s`` (float64 seconds, non-decreasing),
    ``prompt_tokens`` and ``output_tokens`` (int64, at least 1)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)


def arrival_times(spec: ArrivalSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` arrival times in seconds from t=0 for a ``poisson``, ``gamma``, ``constant``
    or ``offline`` process (a ``trace`` process has its times in the trace)."""
    if spec.process == "offline":
        return np.zeros(count)
    if spec.process == "trace" or spec.rate is None:
        raise ValueError(f"process {spec.process} draws no arrival times")
    if spec.process == "constant":
        return np.arange(count) / spec.rate
    if spec.process == "poisson":
        gaps_R = rng.exponential(1.0 / spec.rate, size=count)
    else:  # gamma: mean shape x scale = 1/rate, cv = 1/sqrt(shape)
        cv = 1.0 if spec.cv is None else spec.cv
        gaps_R = rng.gamma(1.0 / cv**2, cv**2 / spec.rate, size=count)
    return np.cumsum(gaps_R)


def draw_lengths(spec: LengthSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` token counts (int64), rounded and clipped to ``[spec.min, spec.max]``
    (``MAX_REQUEST_TOKENS`` where ``max`` is not set)."""
    if spec.distribution == "fixed":
        lengths_R = np.full(count, float(spec.value or 1))
    elif spec.distribution == "uniform":
        lengths_R = rng.integers(spec.low or 1, (spec.high or 1) + 1, size=count).astype(float)
    else:  # lognormal whose mean is spec.mean: E[exp(N(mu, s^2))] = exp(mu + s^2 / 2)
        sigma = spec.sigma or 0.0
        mu = np.log(spec.mean or 1.0) - sigma**2 / 2
        lengths_R = rng.lognormal(mu, sigma, size=count)
    # clipped before the cast: a long tail's draw may be past int64, even infinite
    high = MAX_REQUEST_TOKENS if spec.max is None else spec.max
    return np.clip(np.rint(lengths_R), spec.min, high).astype(np.int64)


def request_table(scenario: Scenario) -> Requests:
    """The requests of a serving ``scenario``: drawn from its arrival process and length
    distributions, or read from its request trace (at most ``count`` rows), whose arrival
    times are kept under ``arrival.process: trace`` and replaced by the process otherwise."""
    from moesim.workload.request_traces import load_request_trace  # it imports Requests

    spec = scenario.workload.requests
    if spec is None:
        raise ValueError(f"{scenario.name} is not a serving scenario (workload.phase serving)")
    rng = np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=(REQUEST_STREAM,)))
    if spec.trace is not None:
        timed = spec.arrival.process == "trace"
        trace = load_request_trace(spec.trace, spec.count, arrivals=timed)
        if timed:
            return trace
        arrival_s = arrival_times(spec.arrival, len(trace), rng)
        return Requests(arrival_s, trace.prompt_tokens, trace.output_tokens)
    # Validation guarantees both lengths where there is no trace.
    arrival_s = arrival_times(spec.arrival, spec.count, rng)
    prompt_R = draw_lengths(spec.prompt_tokens, spec.count, rng)  # type: ignore[arg-type]
    output_R = draw_lengths(spec.output_tokens, spec.count, rng)  # type: ignore[arg-type]
    return Requests(arrival_s, prompt_R, output_R)
