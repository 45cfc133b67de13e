"""The search: prepare every configuration, screen them, simulate the ones that can still win.

1. Each configuration is loaded as a serving scenario (a refusal makes it ``unsupported``) and
   as a fixed batch of the same deployment (a refusal makes it ``invalid``).
2. The screen times each distinct deployment's steps on the executors (``screen.time_steps``)
   and estimates every configuration's capacity (``estimate``): a deployment whose weights or
   KV cache do not fit is ``out_of_memory``; one whose optimistic bound meets no rate
   ``cannot_meet_slo``.
3. The rest are simulated in rounds, best optimistic objective first (``capacity``), until no
   configuration left can beat the ``1 + runners_up``-th best simulated one (a tie in cost
   is not simulated for its headroom): what is left is ``screened_out``. Nothing cheaper is
   missed as long as the bound is optimistic. Where the search holds colocated and
   disaggregated configurations, the best bound of a mode with none simulated is simulated
   too, so that the advice can compare the two.

Every finished evaluation is written at once under ``OUT/screen`` and ``OUT/capacity`` (see
``moesim.sweep.ResultStore``); a rerun repeats none of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim import __version__
from moesim.advise.candidate import Candidate
from moesim.advise.capacity import CapacitySettings, search_capacity
from moesim.advise.disaggregation import (
    disaggregated,
    estimate_pools,
    pool_points,
    resolve,
)
from moesim.advise.estimate import estimate
from moesim.advise.ranking import (
    achieved,
    bound,
    calibration,
    optimistic,
    optimistic_key,
    sort_key,
    unsimulated_modes,
    why_not,
)
from moesim.advise.screen import StepSet, fixed_batch, ladder, time_steps
from moesim.advise.spec import LoadedAdvice, point_overrides
from moesim.advise.traffic import Traffic, traffic_of
from moesim.config import load_scenario
from moesim.errors import ConfigError
from moesim.sweep import Point, ResolvedPoint, ResultStore
from moesim.sweep.executors import Task, run_local, run_ray, worker_count

__all__ = ["ROUND", "Candidate", "Search", "run_search"]

Progress = Callable[[str, int, int], None]
ROUND = 4  # candidates simulated at least per round, before the bound is tightened again


@dataclass
class Search:
    """A finished search: the spec, the traffic, every candidate, the ranking of those that
    meet the SLO (best first) and how much ran now."""

    advice: LoadedAdvice
    traffic: Traffic
    candidates: list[Candidate]
    ranking: list[Candidate]
    screened_now: int
    simulated_now: int
    workers: int


def _digest(document: Any) -> str:
    text = json.dumps(
        {"moesim": __version__, "numpy": np.__version__, "document": document},
        sort_keys=True,
        allow_nan=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _prepare(advice: LoadedAdvice, point: Point, steps: StepSet) -> Candidate:
    candidate = Candidate(point)
    base = advice.base
    try:
        concrete = resolve(base, point)
        targets = pool_points(base, point) if disaggregated(point) is not None else (concrete,)
        fixed = [
            load_scenario(base, point_overrides(target) + fixed_batch("decode", 1, 1, 1))
            for target in targets
        ]
    except ConfigError as error:
        field = (error.field or "").removeprefix("--set ")
        candidate.status, candidate.reason = "invalid", f"{field}: {error.message}".lstrip(": ")
        return candidate
    candidate.concrete = concrete
    try:
        candidate.serving = load_scenario(base, [*advice.fixed, *point_overrides(concrete)])
    except ConfigError as error:
        candidate.status, candidate.reason = "unsupported", f"{error.message} (serving)"
    scheduler = (candidate.serving or fixed[0]).policies.scheduler
    candidate.max_sequences = getattr(scheduler, "max_sequences", None) or getattr(
        scheduler, "batch_size", 1
    )
    candidate.memory_fraction = scheduler.memory_fraction
    candidate.device = fixed[-1].cluster.device.name
    candidate.gpus = sum(scenario.cluster.gpus for scenario in fixed)
    if candidate.device not in advice.spec.prices:
        candidate.status, candidate.reason = "invalid", f"no price for {candidate.device}"
        return candidate
    candidate.price = advice.spec.prices[candidate.device]
    for target, scenario in zip(targets, fixed, strict=True):
        deployment = scenario.model_dump(mode="json")
        deployment["policies"].pop("scheduler")
        candidate.timed.append((_digest({"timing": deployment, "steps": steps.__dict__}), target))
    (candidate.timing_id, _), *decode = candidate.timed  # equal pools share a timing
    candidate.decode_timing_id = decode[0][0] if decode else ""
    return candidate


def _rows(store: ResultStore, ids: set[str]) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    rows = {}
    for point_id in ids:
        for name in (f"{point_id}.parquet", f"{point_id}.error.parquet"):
            path = store.parts / name
            if path.is_file():
                rows[point_id] = pq.read_table(path).to_pylist()[0]
                break
    return rows


def _execute(
    store: ResultStore,
    jobs: list[ResolvedPoint],
    task: Task,
    advice: LoadedAdvice,
    workers: int | None,
    ray_address: str | None,
    progress: Callable[[], None],
) -> int:
    """Run the jobs without a row in ``store``; returns how many ran."""
    done = store.done()
    todo = list({job.id: job for job in jobs if job.id not in done}.values())

    def on_row(row: dict[str, Any]) -> None:
        store.add(row)
        progress()

    for _ in range(len(jobs) - len(todo)):
        progress()
    if not todo:
        return 0
    if ray_address is not None:
        run_ray(str(advice.base), todo, ray_address, on_row, task)
    else:
        run_local(str(advice.base), todo, workers, on_row, task)
    return len(todo)


def _room(candidate: Candidate, timing: dict[str, Any]) -> str:
    """Why the timing row's deployment cannot serve ('' when it can)."""
    if timing.get("status") != "ok":
        status = timing.get("status", "error")
        candidate.status = "out_of_memory" if status == "out_of_memory" else "error"
        return timing.get("error", "not screened")
    room = candidate.memory_fraction * timing["capacity_bytes"] - timing["weights_bytes"]
    gib = 2.0**30
    if room <= 0:
        candidate.status = "out_of_memory"
        return (
            f"weights {timing['weights_bytes'] / gib:.1f} GiB per GPU, more than "
            f"{candidate.memory_fraction:g} x {timing['capacity_bytes'] / gib:.1f} GiB"
        )
    return ""


def _screen(candidate: Candidate, advice: LoadedAdvice, traffic: Traffic) -> None:
    """The screen's verdict from the candidate's timing rows."""
    rows = [candidate.timing] + ([candidate.decode_timing] if candidate.decode_timing_id else [])
    for timing in rows:
        candidate.reason = _room(candidate, timing)
        if candidate.reason:
            return
    slo = advice.slo
    limits = (
        slo.ttft_s,
        slo.tpot_s,
        candidate.max_sequences,
        candidate.memory_fraction,
        advice.spec.evaluate.margin,
    )
    if candidate.decode_timing_id:
        candidate.estimate = estimate_pools(*rows, traffic, *limits)
    else:
        candidate.estimate = estimate(candidate.timing, traffic, *limits)
    if candidate.status == "unsupported":
        return
    floors = candidate.estimate
    if floors.floor_misses:
        candidate.status = "cannot_meet_slo"
        candidate.reason = {
            "ttft": f"TTFT: a percentile prompt alone takes {floors.floor_ttft_s:.3g} s to "
            f"prefill (target {slo.ttft_s:g} s)",
            "tpot": f"TPOT: one sequence alone decodes at {floors.floor_tpot_s:.3g} s a "
            f"token (target {slo.tpot_s:g} s)",
        }[floors.floor_misses]
    elif floors.ceiling_rps <= 0:
        candidate.status, candidate.reason = "cannot_meet_slo", "saturates at any rate"
    else:
        candidate.status = "screened"


def run_search(
    advice: LoadedAdvice,
    out: Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    fresh: bool = False,
    on_progress: Progress | None = None,
) -> Search:
    """Screen every configuration of ``advice`` and simulate those that can win."""
    evaluate, rate = advice.spec.evaluate, advice.spec.objective.rate
    traffic = traffic_of(advice.scenario, advice.slo.percentile)
    most = max(
        [v for p in advice.configurations for k, v in p.params if k.endswith("max_sequences")]
        + [getattr(advice.scenario.policies.scheduler, "max_sequences", 1) or 1],
        default=1,
    )
    prompt = max(1, round(traffic.prompt_mean))
    budget = max(
        [v for p in advice.configurations for k, v in p.params if k.endswith("max_batch_tokens")]
        + [getattr(advice.scenario.policies.scheduler, "max_batch_tokens", prompt) or prompt]
    )
    steps = StepSet(
        tuple(ladder(int(most))),
        traffic.decode_context,
        (prompt, traffic.prompt_quantile),
        max(1, min(math.ceil(budget / prompt), int(most))),  # a chunked step fills its budget
    )
    candidates = [_prepare(advice, point, steps) for point in advice.configurations]
    screen_store = ResultStore(out / "screen", fresh=fresh)
    capacity_store = ResultStore(out / "capacity", fresh=fresh)
    report = on_progress or (lambda stage, done, total: None)

    timed = [c for c in candidates if c.timing_id]
    jobs = list({key: ResolvedPoint(p, key) for c in timed for key, p in c.timed}.values())
    counter = [0]

    def tick(stage: str, total: int) -> Callable[[], None]:
        counter[0] = 0
        report(stage, 0, total)

        def step() -> None:
            counter[0] += 1
            report(stage, counter[0], total)

        return step

    task = functools.partial(time_steps, steps)
    screened_now = _execute(
        screen_store, jobs, task, advice, workers, ray_address, tick("screening", len(jobs))
    )
    timings = _rows(screen_store, {job.id for job in jobs})
    for candidate in timed:
        candidate.timing = timings.get(candidate.timing_id, {})
        candidate.decode_timing = timings.get(candidate.decode_timing_id, {})
        _screen(candidate, advice, traffic)

    margin, keep = evaluate.margin, 1 + evaluate.runners_up
    viable = [c for c in candidates if c.status == "screened"]
    chunk = max(keep, ROUND)  # not the workers: the search is the same on any executor
    settings = CapacitySettings(
        tuple(advice.fixed), evaluate.duration_s, evaluate.rate_tolerance, rate, {}
    )
    simulated_now, pending = 0, list(viable)
    finished: list[Candidate] = []
    step = tick("simulating", len(viable))

    def simulate(batch: list[Candidate], scale: float) -> int:
        for candidate in batch:
            start = scale * (candidate.estimate.capacity_rps or candidate.estimate.ceiling_rps)
            candidate.capacity_id = _digest(
                {
                    "capacity": candidate.serving.model_dump(mode="json"),
                    "fixed": settings.fixed,
                    "duration_s": settings.duration_s,
                    "tolerance": settings.tolerance,
                    "rate": rate,
                    "start": start,
                }
            )
            settings.starts[candidate.capacity_id] = start
        jobs = [ResolvedPoint(c.concrete, c.capacity_id) for c in batch]
        task = functools.partial(search_capacity, settings)
        ran = _execute(capacity_store, jobs, task, advice, workers, ray_address, step)
        rows = _rows(capacity_store, {c.capacity_id for c in batch})
        for candidate in batch:
            candidate.simulated = rows.get(candidate.capacity_id, {})
            status = candidate.simulated.get("status", "error")
            candidate.status = {"ok": "ok", "miss": "misses_slo"}.get(status, status)
            candidate.reason = candidate.simulated.get("error", "")
            finished.append(candidate)
        return ran

    while pending:
        scale = calibration(finished)
        for candidate in pending:
            candidate.bound_rps = bound(candidate, margin, scale)
        pending.sort(key=lambda c: (*optimistic_key(c, rate), c.point.index))
        winners = sorted((c for c in finished if c.status == "ok"), key=lambda c: sort_key(c, rate))
        if len(winners) >= keep:
            kth = winners[keep - 1]
            bar = achieved(kth, rate)
            pending = [c for c in pending if optimistic(c, rate) < bar]
        batch, pending = pending[:chunk], pending[chunk:]
        if not batch:
            break
        simulated_now += simulate(batch, scale)
    # the best bound of each serving mode nothing of which ran, for advice.md to compare
    missing = unsimulated_modes(viable, finished, rate)
    if missing:
        simulated_now += simulate(missing, calibration(finished))
    ranking = sorted((c for c in finished if c.status == "ok"), key=lambda c: sort_key(c, rate))
    for candidate in viable:
        if candidate.status == "screened":
            candidate.status = "screened_out"
            candidate.reason = why_not(candidate, ranking[keep - 1], rate, keep)
    count = 0 if ray_address is not None else worker_count(workers, len(timed) or 1)
    return Search(advice, traffic, candidates, ranking, screened_now, simulated_now, count)
