"""Serving for real: the scenario's requests arrive in real time and are served by the same
scheduler as the simulator's, one attention group per rank (``serving_rank``); or a recorded
sequence of step plans is replayed back to back to time each step one to one.

``serve`` folds what the ranks measured into the ``RunRecords`` the simulator emits, with
``ServingRecords``: a request's first token and finish are the end of the step that emitted
them on the last rank to finish it, a step starts when the first rank starts it, and times
count from the moment the clock started (``arrival_s`` is when a request was due, so the wait
until the next step notices it is the request's queueing, as in a real engine). The KV blocks
per group come from the caller (the simulator's figure, so both plan with the same cache).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from moesim.config import PLACEMENT, SCHEDULER, Scenario, SloSpec, SyntheticRouting
from moesim.metrics import RunRecords, StepRecords
from moesim.metrics.serving import RequestRecords, ServingRecords
from moesim.policies import KVBlocks, ServingState, plan_placement
from moesim.reference.executor import (
    DEFAULT_WARMUP_STEPS,
    check_device,
    device_name,
    device_records,
    in_process,
    spawn_ranks,
    step_records,
)
from moesim.reference.serving_engine import StepLog
from moesim.reference.serving_rank import Replay, ServingJob, kv_shape, serve_rank
from moesim.reference.workplan import UnsupportedScenarioError, check_model
from moesim.workload import Requests, request_table

__all__ = ["Replay", "replay_steps", "serve"]

ProgressCallback = Callable[[int, int], None]  # (requests finished, requests in all)
_MEMORY_SHARE = 0.5  # of the machine's RAM the executor may fill
_NAN = float("nan")


def _check(scenario: Scenario, requests: Requests, kv_blocks_G: np.ndarray, warmup: int) -> None:
    """Refuse in one line what the serving reference cannot run, or run here."""
    name, policies = scenario.name, scenario.policies
    check_model(scenario)
    if not isinstance(scenario.workload.routing, SyntheticRouting):
        raise UnsupportedScenarioError(
            f"{name}: workload.routing: serving replays synthetic routing only"
        )
    if policies.gating.name != "dynamic":
        raise UnsupportedScenarioError(
            f"{name}: policies.gating: the reference executor serves with dynamic gating only"
        )
    if policies.cache.name != "none":
        raise UnsupportedScenarioError(
            f"{name}: policies.cache: expert buffering is not served by the reference executor"
        )
    if getattr(PLACEMENT.build(policies.placement), "learns", False):
        raise UnsupportedScenarioError(
            f"{name}: policies.placement: {policies.placement.name} learns from a fixed "
            "batch's routing; in serving use contiguous, round_robin or file"
        )
    if kv_blocks_G.size != scenario.cluster.gpus:
        raise ValueError(f"{kv_blocks_G.size} KV caches for {scenario.cluster.gpus} groups")
    scheduler = SCHEDULER.build(policies.scheduler)
    block_tokens = policies.scheduler.block_tokens
    for blocks in kv_blocks_G:
        state = ServingState(
            requests.prompt_tokens, requests.output_tokens, KVBlocks(int(blocks), block_tokens)
        )
        scheduler.check(state)
    model = scenario.model
    slots, positions = kv_shape(scenario, requests, warmup)
    kv = slots * positions * model.kv_width * model.layers
    need = scenario.cluster.gpus * (kv + model.total_params) * model.dtype_bytes
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * _MEMORY_SHARE
    if need > have:
        raise UnsupportedScenarioError(
            f"{name}: the reference executor would allocate {need / 2**30:.2f} GiB for the "
            f"weights and KV caches, more than half of this machine's memory "
            f"({have / 2**30:.2f} GiB); shrink the model or the requests"
        )


def _launch(job: ServingJob, device: str, on_progress: ProgressCallback | None) -> tuple:
    """Run the job's ranks; their columns and rank 0's log and clock start."""
    world, total = job.plan.gpus, len(job.requests)
    with tempfile.TemporaryDirectory(prefix="moesim-serve-") as tmp:
        if world == 1:
            here = None if on_progress is None else (lambda done: on_progress(done, total))
            in_process(serve_rank, (0, 1, job, device, tmp, here), tmp)
        else:
            spawn_ranks(serve_rank, (world, job, device, tmp), world, tmp, on_progress, total)
        ranks = [dict(np.load(Path(tmp) / f"rank{r}.npz")) for r in range(world)]
        saved = pickle.loads((Path(tmp) / "log.pkl").read_bytes())
    return ranks, saved


def _job(
    scenario: Scenario, kv_blocks_G: np.ndarray, device: str, warmup: int, **replay
) -> ServingJob:
    check_device(device, scenario.cluster.gpus)
    requests = request_table(scenario)
    kv_blocks_G = np.asarray(kv_blocks_G, dtype=np.int64)
    _check(scenario, requests, kv_blocks_G, warmup)
    return ServingJob(scenario, plan_placement(scenario), requests, kv_blocks_G, warmup, **replay)


def serve(
    scenario: Scenario,
    kv_blocks_G: np.ndarray,
    *,
    device: str = "cpu",
    warmup: int = DEFAULT_WARMUP_STEPS,
    on_progress: ProgressCallback | None = None,
) -> RunRecords:
    """Serve ``scenario``'s requests for real, in real time, with ``kv_blocks_G`` KV blocks
    per attention group (one per GPU); what was measured, as the simulator's records."""
    wall_start = time.perf_counter()
    job = _job(scenario, kv_blocks_G, device, warmup)
    ranks, saved = _launch(job, device, on_progress)
    if on_progress is not None:
        on_progress(len(job.requests), len(job.requests))
    steps = _steps(job, ranks)
    # steps and requests on the clock that the arrivals followed
    start_N = np.min([r["start"] for r in ranks], axis=0) - saved["t0"]
    steps = replace(steps, start_s=start_N)
    serving = _serving(job, saved, start_N, start_N + steps.latency_s, scenario.slo)
    model = scenario.model
    return RunRecords(
        scenario=scenario.name,
        executor="reference",
        device=device_name(device),
        gpus=job.plan.gpus,
        phase="serving",
        steps=steps,
        devices=device_records(
            ranks,
            steps.tokens.size,
            steps.busiest_tokens_NL.shape[1],
            job.plan.experts_per_gpu_LG,
            float(model.expert_params * model.dtype_bytes),
            device,
        ),
        placement=scenario.policies.placement.name,
        routing_resolution="tokens",
        phy2log_LU=job.plan.phy2log_LU,
        owner_LU=job.plan.owner_LU,
        wall_seconds=time.perf_counter() - wall_start,
        events=int(steps.tokens.size),
        serving=serving,
    )


def replay_steps(
    scenario: Scenario,
    kv_blocks_G: np.ndarray,
    replay: Replay,
    *,
    repeats: int = 1,
    device: str = "cpu",
    warmup: int = DEFAULT_WARMUP_STEPS,
) -> list[StepRecords]:
    """Run the recorded plans (each group's, and how many steps each runs) back to back,
    ``repeats`` times in the same ranks; each repeat's steps as measured."""
    job = _job(scenario, kv_blocks_G, device, warmup, replay=replay, repeats=repeats)
    ranks, _ = _launch(job, device, None)
    steps = _steps(job, ranks)
    per_repeat = steps.tokens.size // repeats
    return [_slice(steps, slice(r * per_repeat, (r + 1) * per_repeat)) for r in range(repeats)]


def _slice(steps: StepRecords, part: slice) -> StepRecords:
    names = StepRecords.__dataclass_fields__
    sliced = {name: getattr(steps, name)[part] for name in names}
    sliced["start_s"] = sliced["start_s"] - (sliced["start_s"][0] if sliced["start_s"].size else 0)
    return StepRecords(**sliced)


def _steps(job: ServingJob, ranks: list[dict]) -> StepRecords:
    """The steps every rank measured (all ran the same steps, in lock step)."""
    model = job.scenario.model
    layers = model.moe_layers(job.scenario.stack())
    tokens_N = ranks[0]["tokens"].astype(np.int64)
    expert_bytes = float(model.expert_params * model.dtype_bytes)
    return step_records(ranks, tokens_N, layers, model.top_k, expert_bytes)


def _serving(
    job: ServingJob, saved: dict, start_N: np.ndarray, end_N: np.ndarray, slo: SloSpec | None
) -> ServingRecords:
    """Request timestamps from the steps that scheduled, emitted and finished them."""
    log: StepLog = saved["log"]
    requests = job.requests
    size = len(requests)
    scheduled = np.full(size, _NAN)
    first_token = np.full(size, _NAN)
    finish = np.full(size, _NAN)
    last = np.full(size, _NAN)
    itl = []
    for n in range(end_N.size):
        scheduled[log.scheduled[n]] = start_N[n]
        emitted = log.emitted[n]
        later = emitted[np.isfinite(last[emitted])]
        itl.append(end_N[n] - last[later])
        last[emitted] = end_N[n]
        first_token[log.first_token[n]] = end_N[n]
        finish[log.finished[n]] = end_N[n]
    rows = np.array(log.rows, dtype=np.int64).reshape(-1, 5).T
    return ServingRecords(
        requests=RequestRecords(
            arrival_s=requests.arrival_s,
            scheduled_s=scheduled,
            first_token_s=first_token,
            finish_s=finish,
            prompt_tokens=requests.prompt_tokens,
            output_tokens=requests.output_tokens,
            preemptions=saved["preemptions"],
        ),
        itl_s=np.concatenate(itl) if itl else np.zeros(0),
        prefill_tokens=rows[0],
        decode_tokens=rows[1],
        running=rows[2],
        waiting=rows[3],
        kv_blocks=rows[4],
        kv_capacity_blocks=int(job.kv_blocks_G.sum()),
        duration_s=float(end_N[-1]) if end_N.size else 0.0,
        slo_ttft_s=slo.ttft_s if slo else None,
        slo_tpot_s=slo.tpot_s if slo else None,
        slo_percentile=slo.percentile if slo else 99.0,
    )
