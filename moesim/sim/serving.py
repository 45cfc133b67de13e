"""The serving loop: requests arrive, each GPU's attention group schedules its own, and every
step runs across all groups at once (an MoE layer waits for the slowest group).

Each GPU is a data-parallel attention group with its own queue and paged KV cache; requests
are given to groups round robin in arrival order. A step's plan is every group's plan; its
duration is the fixed-batch layer model on the plan's tokens (``serving_step``). While every
group only decodes, the plan repeats with contexts one longer each step: such a stretch (up to
the next arrival, finish or KV block it would need) is advanced with one SimPy timeout, each
of its steps still timed on its own routing and contexts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import numpy as np
import simpy

from moesim.config import GATING, PLACEMENT, SCHEDULER, Scenario, SyntheticRouting
from moesim.errors import ConfigError
from moesim.hardware import KINDS, DeviceCosts, build_topology
from moesim.metrics import PHASES, DeviceRecords, RunRecords, SpanRecords, StepRecords
from moesim.metrics.serving import RequestRecords, ServingRecords
from moesim.policies import (
    KVBlocks,
    ServingState,
    StepOutcome,
    StepPlan,
    advance,
    decode_stretch,
    plan_placement,
)
from moesim.sim.local_work import expert_table
from moesim.sim.memory import (
    expert_weights_bytes,
    kv_bytes_per_token,
    serving_kv_blocks,
    weights_bytes,
)
from moesim.sim.serving_step import step_shape, time_step
from moesim.workload import SyntheticRouter, request_table

__all__ = ["simulate_serving"]

ProgressCallback = Callable[[float, float], None]  # (requests done, requests in all)
_SERVING_ROUTING = 5  # spawn key of the serving loop's routing stream
_NAN = float("nan")
_HAIR_S = 1e-9  # added to a scheduler's timeout wait


def _refuse_unsupported(scenario: Scenario) -> None:
    """What serving does not model yet, refused in one line rather than silently ignored."""
    policies, workload = scenario.policies, scenario.workload
    if policies.cache.name != "none":
        raise ConfigError(
            None, "policies.cache", "expert buffering is not simulated in serving yet"
        )
    if getattr(PLACEMENT.build(policies.placement), "learns", False):
        raise ConfigError(
            None,
            "policies.placement",
            f"{policies.placement.name} learns from a fixed batch's routing; in serving use "
            "contiguous, round_robin or file",
        )
    if not isinstance(workload.routing, SyntheticRouting):
        raise ConfigError(None, "workload.routing", "serving draws synthetic routing only")
    if scenario.model.architecture != "decoder":
        raise ConfigError(None, "model.architecture", "serving runs decoder-only models")


class _Groups:
    """Every attention group's state, the per-request timestamps and the per-step rows."""

    def __init__(self, scenario: Scenario, blocks_G: np.ndarray, block_tokens: int) -> None:
        requests = request_table(scenario)
        self.arrival_s = requests.arrival_s
        self.prompt, self.output = requests.prompt_tokens, requests.output_tokens
        size = len(requests)
        self.group_R = np.arange(size) % blocks_G.size
        self.states = [
            ServingState(self.prompt, self.output, KVBlocks(int(b), block_tokens)) for b in blocks_G
        ]
        self.scheduled_s = np.full(size, _NAN)
        self.first_token_s = np.full(size, _NAN)
        self.finish_s = np.full(size, _NAN)
        self.last_token_s = np.full(size, _NAN)
        self.itl: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []  # per step: prefill, decode tokens, running, waiting, KV
        self.done = 0

    def oldest_wait(self, state: ServingState, now: float) -> float:
        return float(now - self.arrival_s[state.waiting[0]]) if state.waiting.size else 0.0

    def record_queue(self, plans: list[StepPlan], steps: int) -> None:
        """The rows of a stretch of ``steps`` steps, once its plans are applied: the steps'
        prefill and decode tokens and sequences, the requests left waiting, the KV blocks
        held at the stretch's end."""
        states = self.states
        row = [
            sum(p.prefill_tokens for p in plans),
            sum(p.decode_tokens for p in plans),
            sum(p.request.size for p in plans),
            sum(s.waiting.size for s in states),
            sum(s.kv.used_blocks for s in states),
        ]
        self.rows.append(np.repeat(np.array(row, dtype=np.int64)[:, None], steps, axis=1))

    def emit(self, start: float, latency_n: np.ndarray, outcomes: list[StepOutcome]) -> None:
        """Timestamp what a stretch's steps (``latency_n`` each, from ``start``) emitted: each
        emitting request one token per step."""
        ends = start + np.cumsum(latency_n)
        for outcome in outcomes:
            emitted = outcome.emitted
            if not emitted.size:
                continue
            later = ~np.isin(emitted, outcome.first_token)
            self.itl.append(ends[0] - self.last_token_s[emitted[later]])
            if latency_n.size > 1:  # a decode stretch: the gap before each further token
                self.itl.append(np.repeat(latency_n[1:], emitted.size))
            self.first_token_s[outcome.first_token] = ends[0]
            self.last_token_s[emitted] = ends[-1]
            self.finish_s[outcome.finished] = ends[-1]
            self.done += outcome.finished.size


class _Stepper:
    """Times one step of the groups' plans: the plans' tokens and contexts, routed afresh."""

    def __init__(self, scenario: Scenario, groups: _Groups) -> None:
        model, cluster = scenario.model, scenario.cluster
        self.scenario, self.groups = scenario, groups
        self.gpus = cluster.gpus
        self.costs = DeviceCosts.from_profile(cluster.device, model.dtype)
        self.topology = build_topology(cluster)
        self.plan = plan_placement(scenario)
        self.gating = GATING.build(scenario.policies.gating)
        self.layers = model.moe_layers(scenario.stack())
        seed = np.random.SeedSequence(scenario.seed, spawn_key=(_SERVING_ROUTING,))
        self.router = SyntheticRouter(
            scenario.workload.routing,
            model.num_experts,
            model.top_k,
            self.layers,
            np.random.default_rng(seed),
        )
        self.expert_tokens_LG = np.zeros((self.layers, self.gpus))
        # one expert's seconds by rows, for as many rows as a step can give it
        most = cluster.gpus * step_tokens(scenario)
        self.expert_by_rows = expert_table(scenario, self.costs, np.array([most]), None)

    def time(self, plans: list[StepPlan], steps: int, offset: int = 0) -> StepRecords:
        """``steps`` steps of ``plans``, ``offset`` steps into its decode stretch: each step's
        contexts one longer than the last's."""
        groups, model = self.groups, self.scenario.model
        states = groups.states
        request = np.concatenate([p.request for p in plans])
        new_tokens = np.concatenate([p.new_tokens for p in plans])
        is_prefill = np.concatenate([p.is_prefill for p in plans])
        # a prefill samples its first token in the step that completes what it must prefill
        completes = np.concatenate(
            [
                p.context + p.new_tokens >= s.prefill_tokens_R[p.request]
                for s, p in zip(states, plans, strict=True)
            ]
        )
        shape = step_shape(
            groups.group_R[request],
            new_tokens,
            np.concatenate([p.context for p in plans]) + offset,
            is_prefill,
            ~is_prefill | completes,
            self.gpus,
        )
        tokens = int(shape.tokens_G.sum())
        ids = self.router.draw(steps, tokens)
        timing = time_step(
            self.scenario,
            self.costs,
            self.topology,
            self.plan,
            self.gating,
            shape,
            ids,
            self.expert_by_rows,
        )
        self.expert_tokens_LG += timing.tokens_NLG.sum(axis=0)
        routed = self.layers * tokens * model.top_k
        return timing.records(np.zeros(steps), tokens, routed)


def _up_to(stepper: _Stepper, plans: list[StepPlan], stretch: int, until: float) -> StepRecords:
    """The steps of a decode stretch of at most ``stretch`` steps that start before ``until``
    seconds from now (the next arrival, which may change the plans), timed in as few chunks
    as the first step's latency predicts."""
    parts = [stepper.time(plans, 1)]
    elapsed, done = float(parts[0].latency_s[0]), 1
    while done < stretch and elapsed < until:
        left = (until - elapsed) / max(float(parts[-1].latency_s[-1]), 1e-12)
        more = stretch - done if left >= stretch else min(stretch - done, int(np.ceil(left)) + 1)
        parts.append(stepper.time(plans, more, done))
        elapsed += float(parts[-1].latency_s.sum())
        done += more
    records = StepRecords.concat(parts) if len(parts) > 1 else parts[0]
    ends = np.cumsum(records.latency_s)
    keep = min(int(np.searchsorted(ends, until, side="left")) + 1, ends.size)
    return _first(records, keep)


def _first(records: StepRecords, steps: int) -> StepRecords:
    names = StepRecords.__dataclass_fields__
    return StepRecords(**{name: getattr(records, name)[:steps] for name in names})


def step_tokens(scenario: Scenario) -> int:
    """The most tokens one attention group's step can hold: the scheduler's budget, or for
    static batches a batch of the longest prompts."""
    params = scenario.policies.scheduler
    budget = getattr(params, "max_batch_tokens", None)
    if budget is None:
        budget = params.batch_size * int(request_table(scenario).prompt_tokens.max())
    return int(budget)


def _kv_cache(scenario: Scenario) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weights_G, blocks_G, activation_G)``; refuses a GPU with no room for a KV block."""
    params, cluster = scenario.policies.scheduler, scenario.cluster
    weights_G = weights_bytes(scenario, plan_placement(scenario))
    blocks_G, activation_G = serving_kv_blocks(
        scenario, weights_G, step_tokens(scenario), params.block_tokens, params.memory_fraction
    )
    if blocks_G.min() < 1:
        worst = int(np.argmin(blocks_G))
        gib = 2.0**30
        raise ConfigError(
            None,
            "cluster.device",
            f"no room for a KV cache on GPU {worst}: its weights and a step's activations take "
            f"{(weights_G[worst] + activation_G[worst]) / gib:.2f} GiB of "
            f"{params.memory_fraction:g} x {cluster.device.memory.capacity / gib:.2f} GiB",
        )
    return weights_G, blocks_G, activation_G


def simulate_serving(
    scenario: Scenario, *, trace_steps: int = 0, on_progress: ProgressCallback | None = None
) -> RunRecords:
    """Serve the scenario's requests; ``on_progress(finished, requests)`` reports progress;
    the first ``trace_steps`` steps become spans (each step on every GPU's compute stream)."""
    wall_start = time.perf_counter()
    _refuse_unsupported(scenario)
    params = scenario.policies.scheduler
    weights_G, blocks_G, activation_G = _kv_cache(scenario)
    scheduler = SCHEDULER.build(params)
    groups = _Groups(scenario, blocks_G, params.block_tokens)
    for state in groups.states:
        scheduler.check(state)
    stepper = _Stepper(scenario, groups)
    total = groups.arrival_s.size
    steps: list[StepRecords] = []
    events = 0
    env = simpy.Environment()
    wake = [env.event()]

    def arrivals() -> Generator[simpy.Event, None, None]:
        times, first = np.unique(groups.arrival_s, return_index=True)
        bounds = np.append(first, total)
        for at, lo, hi in zip(times, bounds[:-1], bounds[1:], strict=True):
            if at > env.now:
                yield env.timeout(at - env.now)
            for request in range(lo, hi):
                groups.states[groups.group_R[request]].arrive(request)
            if not wake[0].triggered:
                wake[0].succeed()

    def next_arrival() -> float:
        index = int(np.searchsorted(groups.arrival_s, env.now, side="right"))
        return float(groups.arrival_s[index]) if index < total else np.inf

    def engine() -> Generator[simpy.Event, None, None]:
        nonlocal events
        states = groups.states
        while groups.done < total:
            waits = [groups.oldest_wait(s, env.now) for s in states]
            plans = [scheduler.plan(s, w) for s, w in zip(states, waits, strict=True)]
            if all(p.empty for p in plans):
                admits = [scheduler.admit_in_s(s, w) for s, w in zip(states, waits, strict=True)]
                soonest = min((a for a in admits if a is not None), default=None)
                if wake[0].triggered:
                    wake[0] = env.event()
                # a hair past the timeout, so that rounding cannot leave the wait just short
                later = [] if soonest is None else [env.timeout(max(soonest, 0.0) + _HAIR_S)]
                pending = [wake[0], *later]
                yield env.any_of(pending)
                continue
            stretch = min(decode_stretch(s, p) for s, p in zip(states, plans, strict=True))
            start, until = env.now, next_arrival() - env.now
            timed = _up_to(stepper, plans, stretch, until)
            latency_n = timed.latency_s
            timed.start_s[:] = start + np.concatenate([[0.0], np.cumsum(latency_n)[:-1]])
            steps.append(timed)
            for step_plan in plans:
                fresh = step_plan.request[np.isnan(groups.scheduled_s[step_plan.request])]
                groups.scheduled_s[fresh] = start
            outcomes = [advance(s, p, latency_n.size) for s, p in zip(states, plans, strict=True)]
            groups.record_queue(plans, latency_n.size)
            yield env.timeout(float(latency_n.sum()))
            events += 1
            groups.emit(start, latency_n, outcomes)
            if on_progress is not None:
                on_progress(groups.done, total)

    env.process(arrivals())
    env.process(engine())
    env.run()
    return _records(
        scenario,
        groups,
        stepper,
        steps,
        events,
        wall_start,
        weights_G,
        blocks_G,
        activation_G,
        env.now,
        trace_steps,
    )


def _records(
    scenario: Scenario,
    groups: _Groups,
    stepper: _Stepper,
    steps: list[StepRecords],
    events: int,
    wall_start: float,
    weights_G: np.ndarray,
    blocks_G: np.ndarray,
    activation_G: np.ndarray,
    duration_s: float,
    trace_steps: int,
) -> RunRecords:
    """The run's records: the steps, the devices (the KV cache as reserved) and serving's."""
    cluster, slo = scenario.cluster, scenario.slo
    params = scenario.policies.scheduler
    rows = np.concatenate(groups.rows, axis=1) if groups.rows else np.zeros((5, 0), np.int64)
    serving = ServingRecords(
        requests=RequestRecords(
            arrival_s=groups.arrival_s,
            scheduled_s=groups.scheduled_s,
            first_token_s=groups.first_token_s,
            finish_s=groups.finish_s,
            prompt_tokens=groups.prompt,
            output_tokens=groups.output,
            preemptions=np.sum([s.preemptions_R for s in groups.states], axis=0),
        ),
        itl_s=np.concatenate(groups.itl) if groups.itl else np.zeros(0),
        prefill_tokens=rows[0],
        decode_tokens=rows[1],
        running=rows[2],
        waiting=rows[3],
        kv_blocks=rows[4],
        kv_capacity_blocks=int(blocks_G.sum()),
        duration_s=float(duration_s),
        slo_ttft_s=slo.ttft_s if slo else None,
        slo_tpot_s=slo.tpot_s if slo else None,
        slo_percentile=slo.percentile if slo else 99.0,
    )
    plan = stepper.plan
    devices = DeviceRecords(
        capacity_bytes=cluster.device.memory.capacity,
        weights_bytes=weights_G,
        kv_cache_bytes=blocks_G * params.block_tokens * kv_bytes_per_token(scenario),
        activation_peak_bytes=activation_G,
        expert_tokens_LG=stepper.expert_tokens_LG,
        expert_weights_bytes=expert_weights_bytes(scenario, plan),
    )
    all_steps = StepRecords.concat(steps) if steps else _no_steps(stepper.layers)
    return RunRecords(
        scenario=scenario.name,
        executor="sim",
        device=cluster.device.name,
        gpus=cluster.gpus,
        phase="serving",
        steps=all_steps,
        spans=_step_spans(all_steps, serving, cluster.gpus, trace_steps),
        devices=devices,
        placement=scenario.policies.placement.name,
        routing_resolution="tokens",
        phy2log_LU=plan.phy2log_LU,
        owner_LU=plan.owner_LU,
        wall_seconds=time.perf_counter() - wall_start,
        events=events,
        serving=serving,
    )


def _step_spans(steps: StepRecords, serving: ServingRecords, gpus: int, traced: int) -> SpanRecords:
    """The first ``traced`` steps as spans on every GPU's compute stream, named by what they
    run (the layers inside a serving step are not traced)."""
    n = min(traced, steps.latency_s.size)
    if n == 0:
        return SpanRecords.empty()
    names = np.array(
        [
            f"step: {p} prefill + {d} decode tokens"
            for p, d in zip(serving.prefill_tokens[:n], serving.decode_tokens[:n], strict=True)
        ]
    )
    return SpanRecords(
        device=np.repeat(np.arange(gpus), n),
        stream=np.full(gpus * n, "compute"),
        name=np.tile(names, gpus),
        step=np.tile(np.arange(n), gpus),
        layer=np.full(gpus * n, -1),
        start_s=np.tile(steps.start_s[:n], gpus),
        duration_s=np.tile(steps.latency_s[:n], gpus),
    )


def _no_steps(layers: int) -> StepRecords:
    empty = np.zeros(0)
    return StepRecords(
        start_s=empty,
        latency_s=empty,
        tokens=empty,
        routed=empty,
        processed=empty,
        dropped=empty,
        padded=empty,
        alltoall_bytes_NK=np.zeros((0, len(KINDS))),
        load_imbalance=empty,
        breakdown_NP=np.zeros((0, len(PHASES))),
        busiest_tokens_NL=np.zeros((0, layers)),
        expert_tokens_NL=np.zeros((0, layers)),
        cache_hits=empty,
        cache_misses=empty,
        cache_evictions=empty,
        host_to_device_bytes=empty,
    )
