"""The screen's measurements: fixed-batch steps of a candidate timed by the same layer model.

For a candidate's cluster, layout and MoE policies (the scheduler does not change a step), a
few decode steps at a ladder of sequences per attention group, at the traffic's mean decode
context, one prompt of the mean length per group prefilled (with the share of its time spent
outside the experts, which the prompt's own group pays alone) and as many as the token budget
holds (a prefill pool's full step), and, for the floors no load can go
below, one sequence decoding and one prompt of the SLO-percentile length prefilling alone (a
lone request served: its group alone runs it). A worker runs ``time_steps`` for each
distinct set; ``estimate`` turns it into a capacity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesim import api
from moesim.advise.spec import point_overrides
from moesim.config import Scenario, load_scenario
from moesim.errors import MoesimError
from moesim.sweep import Point

__all__ = ["DECODE_STEPS", "StepSet", "fixed_batch", "ladder", "time_steps"]

DECODE_STEPS = 3  # a few steps: the routing's spread over experts, not one draw of it
_GROWTH = 4  # the ladder multiplies sequences per group by this much


def ladder(most: int) -> list[int]:
    """Sequences per attention group to time decode at: 1, 4, 16, ... up to ``most``."""
    batches = [1]
    while batches[-1] < most:
        batches.append(min(batches[-1] * _GROWTH, most))
    return batches


def fixed_batch(phase: str, batch_size: int, seq_len: int, steps: int) -> list[str]:
    """Overrides that turn a serving candidate into a fixed batch of the same deployment."""
    return [
        f"workload.phase={phase}",
        "workload.requests=null",
        "slo=null",
        f"workload.batch_size={batch_size}",
        f"workload.seq_len={seq_len}",
        f"workload.steps={steps}",
    ]


def groups_of(scenario: Scenario) -> int:
    """Data-parallel attention groups: each has its own requests and KV cache."""
    return scenario.cluster.gpus // scenario.cluster.parallel.attention_tp


@dataclass(frozen=True)
class StepSet:
    """What to time: ``batches`` (sequences per group) at ``context`` for decode, one prompt
    per group of ``prompts`` tokens (the mean and the percentile lengths), and
    ``prefill_batch`` mean prompts per group at once (a prefill pool's full step)."""

    batches: tuple[int, ...]
    context: int
    prompts: tuple[int, int]
    prefill_batch: int = 1  # mean prompts per group in a full prefill step (the token budget)


def _run(base: str, overrides: list[str]) -> Any:
    result, _ = api.run(load_scenario(base, overrides))
    return result


def _lone_prefill_s(base: str, point: Point, prompt: int) -> float:
    """The prefill of one prompt alone, as serving runs it: in one attention group, the
    others idle (a fixed batch of one would spread its tokens over every GPU): a lone
    request's TTFT in the serving simulation, or where serving refuses the candidate, the
    fixed batch of one prompt."""
    requests = (
        "workload.requests={count: 1, arrival: {process: offline}, prompt_tokens: "
        f"{{distribution: fixed, value: {prompt}}}, output_tokens: "
        "{distribution: fixed, value: 1}}"
    )
    try:
        return float(_run(base, [*point_overrides(point), requests, "slo=null"]).serving.ttft_s.p50)
    except MoesimError:  # serving refuses it: the fixed batch of one prompt, spread out
        pass
    try:
        return _run(
            base, point_overrides(point) + fixed_batch("prefill", 1, prompt, 1)
        ).latency_s.mean
    except api.OutOfMemoryError:  # a prompt's activations alone: not servable
        return float("inf")


def _full_prefill(base: str, point: Point, groups: int, steps: StepSet) -> tuple[float, int]:
    """A full prefill step's time and its mean prompts per group: ``steps.prefill_batch``,
    halved while the fixed batch (which holds its own KV) does not fit; one prompt (time
    inf) where even two do not."""
    per_group = steps.prefill_batch
    while per_group > 1:
        overrides = fixed_batch("prefill", groups * per_group, steps.prompts[0], 1)
        try:
            return _run(base, point_overrides(point) + overrides).latency_s.mean, per_group
        except api.OutOfMemoryError:
            per_group //= 2
    return float("inf"), 1


def time_steps(steps: StepSet, base: str, point: Point, point_id: str) -> dict[str, Any]:
    """A candidate's step times and memory (a worker task: never raises; a failure is the
    row's status). Decode stops at the first batch whose KV cache does not fit."""
    row: dict[str, Any] = {"point_id": point_id}
    try:
        first = load_scenario(base, point_overrides(point) + fixed_batch("decode", 1, 1, 1))
        groups = groups_of(first)
        decode: dict[str, list[float]] = {"batch": [], "s": [], "kv": [], "activation": []}
        weights = capacity = 0.0
        for batch in steps.batches:
            overrides = fixed_batch("decode", batch * groups, steps.context, DECODE_STEPS)
            try:
                result = _run(base, point_overrides(point) + overrides)
            except api.OutOfMemoryError as error:
                if not decode["batch"]:
                    return row | {"status": "out_of_memory", "error": str(error)}
                break
            memory = result.memory
            if memory.out_of_memory and decode["batch"]:
                break
            weights = max(memory.weights_bytes_per_device)
            capacity = memory.capacity_bytes
            decode["batch"].append(batch)
            decode["s"].append(result.latency_s.mean)
            decode["kv"].append(max(memory.kv_cache_bytes_per_device))
            decode["activation"].append(max(memory.activation_peak_bytes_per_device))
        prefill, local = [], 1.0
        try:
            overrides = fixed_batch("prefill", groups, steps.prompts[0], 1)
            result = _run(base, point_overrides(point) + overrides)
            prefill.append(result.latency_s.mean)
            phases = result.time_breakdown_s
            shared = phases.get("expert", 0.0) + phases.get("transfer", 0.0)
            local = 1.0 - shared / max(sum(phases.values()), 1e-30)
        except api.OutOfMemoryError:  # a prompt's activations alone: not servable
            prefill.append(float("inf"))
        prefill.append(_lone_prefill_s(base, point, steps.prompts[1]))
        full, per_group = _full_prefill(base, point, groups, steps)
        lone = _run(base, point_overrides(point) + fixed_batch("decode", 1, steps.context, 1))
    except api.OutOfMemoryError as error:
        return row | {"status": "out_of_memory", "error": str(error)}
    except MoesimError as error:
        return row | {"status": "error", "error": " ".join(str(error).split())}
    except Exception as error:  # a candidate's failure is its row; the search goes on
        return row | {"status": "error", "error": f"{type(error).__name__}: {error}"}
    return row | {
        "status": "ok",
        "error": "",
        "groups": groups,
        "gpus": first.cluster.gpus,
        "weights_bytes": weights,
        "capacity_bytes": capacity,
        "decode_batch": decode["batch"],
        "decode_s": decode["s"],
        "decode_kv_bytes": decode["kv"],
        "decode_activation_bytes": decode["activation"],
        "prefill_mean_s": prefill[0],
        "prefill_local_fraction": local,
        "prefill_lone_s": prefill[1],
        "prefill_batch": per_group,
        "prefill_full_s": full,
        "decode_lone_s": lone.latency_s.mean,
    }
