"""The screen's steady-state estimate of a candidate's capacity under the SLO.

Continuous batching on ``groups`` data-parallel attention groups that step together, each
receiving ``lambda / groups`` requests/s: a step decodes the ``n`` running sequences of each
group and prefills the prompts that arrived during the previous step. The step lasts as long
as its slowest group: the part of a prefill outside the experts (attention, router,
dispatch: share ``f``) is paid by the group with the most new prompts, the experts' part is
spread over every GPU, so it follows the mean:

    T = t_decode(n) + p * (f E[max over groups of Poisson(r T)] + (1 - f) r T),
    n = r * output_mean * T

with ``r`` the per-group rate and ``p`` the time one mean prompt adds to a step. TPOT is the
step time ``T``; TTFT is a step of waiting, then a step with the request's own (percentile)
prompt. The capacity is the highest rate whose fixed point exists with ``n`` within
``max_sequences`` and the KV cache, and meets the targets; ``relaxed_rps`` is the same for
targets loosened by the margin and ``ceiling_rps`` without targets. The floors (one sequence
decoding, one percentile prompt prefilling, alone in the cluster) are what no load goes
below: a candidate whose floor misses a loosened target cannot meet it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.advise.traffic import Traffic

__all__ = [
    "Estimate",
    "Model",
    "SteadyState",
    "estimate",
    "expected_max_poisson",
    "sequences_fit",
    "steady_state",
]

_ITERATIONS = 500
_BISECTIONS = 36  # over nine decades of rate: to 1 part in 10^9
_TOLERANCE = 1e-7  # relative change of the step at which the fixed point is reached
_TABLE = 4096  # counts whose log-factorial is tabulated
_LOG_FACTORIAL = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, _TABLE)))])


def expected_max_poisson(mean: float, count: int) -> float:
    """``E[max(N_1..N_count)]`` of i.i.d. Poisson(``mean``) counts: sum over k of
    ``1 - F(k)^count``."""
    if mean <= 0:
        return 0.0
    if count == 1:
        return mean
    top = int(mean + 12 * math.sqrt(mean) + 12)
    k = np.arange(top + 1)
    if top < _TABLE:
        log_factorial = _LOG_FACTORIAL[: top + 1]
    else:
        log_factorial = np.array([math.lgamma(i + 1) for i in k])
    log_pmf = -mean + k * math.log(mean) - log_factorial
    cdf = np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)
    return float(np.sum(1.0 - cdf**count))


@dataclass(frozen=True)
class SteadyState:
    """At one rate: the mean step (and TPOT) ``step_s``, running sequences per group, and the
    TTFT of a percentile-length prompt."""

    step_s: float
    running: float
    ttft_s: float


@dataclass(frozen=True)
class Model:
    """A candidate's measured steps (see ``screen.time_steps``) and limits."""

    groups: int
    decode_batch: np.ndarray
    decode_s: np.ndarray
    prefill_mean_s: float
    prefill_lone_s: float
    decode_lone_s: float
    prefill_local_fraction: float
    most_running: float  # max_sequences and the KV cache, per group
    output_mean: float

    def decode(self, running: float) -> float:
        """Decode step time at ``running`` sequences per group: linear between the measured
        batches, continued along the last segment past them."""
        batch, seconds = self.decode_batch, self.decode_s
        if running <= batch[-1] or batch.size == 1:
            return float(np.interp(running, batch, seconds))
        slope = (seconds[-1] - seconds[-2]) / (batch[-1] - batch[-2])
        return float(seconds[-1] + slope * (running - batch[-1]))


def steady_state(model: Model, rate: float) -> SteadyState | None:
    """The fixed point at ``rate`` requests/s, or None where the deployment saturates."""
    per_group = rate / model.groups
    one = model.decode(1.0)
    prompt = max(model.prefill_mean_s - one, 0.0)
    quantile = max(model.prefill_lone_s - model.decode_lone_s, 0.0)
    step = one
    for _ in range(_ITERATIONS):
        running = per_group * model.output_mean * step
        if running > model.most_running:
            return None
        mean = per_group * step
        local = model.prefill_local_fraction
        arrivals = local * expected_max_poisson(mean, model.groups) + (1 - local) * mean
        following = model.decode(max(running, 1.0)) + prompt * arrivals
        if abs(following - step) <= _TOLERANCE * step:
            return SteadyState(following, running, following + model.decode(running) + quantile)
        step = following
    return None  # still climbing: at the edge of saturation


def _meets(model: Model, rate: float, ttft_s: float | None, tpot_s: float | None) -> str:
    """'' when the estimate at ``rate`` meets the targets, else what fails."""
    state = steady_state(model, rate)
    if state is None:
        return "saturation"
    if tpot_s is not None and state.step_s > tpot_s:
        return "tpot"
    if ttft_s is not None and state.ttft_s > ttft_s:
        return "ttft"
    return ""


def _capacity(model: Model, ttft_s: float | None, tpot_s: float | None) -> tuple[float, str]:
    """The highest rate meeting the targets (0 if none) and what fails just above it."""
    high = 1.01 * model.groups * model.most_running / (model.output_mean * model.decode(1.0))
    low = high * 1e-9
    failing = _meets(model, low, ttft_s, tpot_s)
    if failing:
        return 0.0, failing
    for _ in range(_BISECTIONS):
        middle = math.sqrt(low * high)
        if _meets(model, middle, ttft_s, tpot_s):
            high = middle
        else:
            low = middle
    return low, _meets(model, high, ttft_s, tpot_s) or "saturation"


@dataclass(frozen=True)
class Estimate:
    """The screen's reading of one candidate: the estimated ``capacity_rps`` and what limits
    it, the capacity for targets loosened by the margin and without targets, the floors and
    which loosened target a floor misses (''), and, at the estimated capacity, the tokens/s
    per GPU and per user."""

    capacity_rps: float
    binding: str
    relaxed_rps: float
    ceiling_rps: float
    floor_tpot_s: float
    floor_ttft_s: float
    floor_misses: str
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float


def sequences_fit(timing: dict[str, Any], memory_fraction: float) -> float:
    """Sequences of the mean decode context whose KV cache fits beside the weights and the
    largest step's activations, per attention group."""
    kv_per_sequence = timing["decode_kv_bytes"][-1] / timing["decode_batch"][-1]
    free = (
        memory_fraction * timing["capacity_bytes"]
        - timing["weights_bytes"]
        - timing["decode_activation_bytes"][-1]
    )
    return free / kv_per_sequence if kv_per_sequence > 0 else math.inf


def estimate(
    timing: dict[str, Any],
    traffic: Traffic,
    ttft_s: float | None,
    tpot_s: float | None,
    max_sequences: int,
    memory_fraction: float,
    margin: float,
) -> Estimate:
    """The estimate from a ``time_steps`` row (status ok) for a candidate's scheduler limits."""
    model = Model(
        groups=int(timing["groups"]),
        decode_batch=np.asarray(timing["decode_batch"], dtype=float),
        decode_s=np.asarray(timing["decode_s"], dtype=float),
        prefill_mean_s=float(timing["prefill_mean_s"]),
        prefill_lone_s=float(timing["prefill_lone_s"]),
        decode_lone_s=float(timing["decode_lone_s"]),
        prefill_local_fraction=float(timing["prefill_local_fraction"]),
        most_running=max(min(float(max_sequences), sequences_fit(timing, memory_fraction)), 0.0),
        output_mean=traffic.output_mean,
    )
    loose = 1.0 + margin
    capacity, binding = _capacity(model, ttft_s, tpot_s)
    relaxed, _ = _capacity(
        model,
        None if ttft_s is None else ttft_s * loose,
        None if tpot_s is None else tpot_s * loose,
    )
    ceiling, _ = _capacity(model, None, None)
    misses = ""
    if ttft_s is not None and model.prefill_lone_s > ttft_s * loose:
        misses = "ttft"
    elif tpot_s is not None and model.decode_lone_s > tpot_s * loose:
        misses = "tpot"
    state = steady_state(model, capacity) if capacity > 0 else None
    return Estimate(
        capacity_rps=capacity,
        binding=binding,
        relaxed_rps=relaxed,
        ceiling_rps=ceiling,
        floor_tpot_s=model.decode_lone_s,
        floor_ttft_s=model.prefill_lone_s,
        floor_misses=misses,
        tokens_per_s_per_gpu=capacity * traffic.output_mean / int(timing["gpus"]),
        tokens_per_s_per_user=0.0 if state is None else 1.0 / state.step_s,
    )
