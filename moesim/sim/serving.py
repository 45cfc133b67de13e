"""The serving loop: requests arrive, each GPU's attention group schedules its own, and every
step runs across all groups at once (an MoE layer waits for the slowest group).

Each GPU is a data-parallel attention group with its own queue and paged KV cache
(``serving_groups``); requests are given to groups round robin in arrival order. A step's plan
is every group's plan; its duration is the fixed-batch layer model on the plan's tokens
(``serving_step``). While every group only decodes, the plan repeats with contexts one longer
each step: such a stretch (up to the next arrival, finish or KV block it would need) is
advanced with one SimPy timeout, its steps timed together on their own routing and contexts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import numpy as np
import simpy

from moesim.config import PLACEMENT, SCHEDULER, Scenario, SyntheticRouting
from moesim.errors import ConfigError
from moesim.metrics import DeviceRecords, RunRecords, SpanRecords, StepRecords
from moesim.metrics.serving import ServingRecords
from moesim.policies import StepPlan, advance, plan_placement
from moesim.sim.layout import Layout
from moesim.sim.memory import expert_weights_bytes, kv_bytes_per_token
from moesim.sim.serving_groups import Groups, KVCache, kv_cache, step_tokens
from moesim.sim.serving_plans import Planner
from moesim.sim.serving_step import Stepper, stretch
from moesim.workload import request_table

__all__ = ["PlanCallback", "simulate_serving"]

# (simulated seconds so far, the last arrival's time or now if later): a long run's progress
ProgressCallback = Callable[[float, float], None]
# (each group's plan, steps it runs): a plan of decodes runs ``steps`` times, contexts one
# longer each time; replaying these in order repeats the run's work exactly
PlanCallback = Callable[[list[StepPlan], int], None]
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


def simulate_serving(
    scenario: Scenario,
    *,
    trace_steps: int = 0,
    on_progress: ProgressCallback | None = None,
    on_plans: PlanCallback | None = None,
) -> RunRecords:
    """Serve the scenario's requests; ``on_progress(now, until)`` reports progress in
    simulated seconds (``ProgressCallback``),
    ``on_plans(plans, steps)`` each step's plans as they run (``PlanCallback``); the first
    ``trace_steps`` steps become spans (each step on every GPU's compute stream)."""
    wall_start = time.perf_counter()
    _refuse_unsupported(scenario)
    params = scenario.policies.scheduler
    layout = Layout.of(scenario)
    requests, plan = request_table(scenario), plan_placement(layout.view(scenario))
    kv = kv_cache(scenario, plan, requests)
    scheduler = SCHEDULER.build(params)
    groups = Groups(requests, kv.blocks_A, params.block_tokens)
    for state in groups.states:
        scheduler.check(state)
    most_rows = kv.blocks_A.size * step_tokens(scenario, requests)
    stepper = Stepper(scenario, groups, plan, most_rows)
    planner = Planner(scheduler, groups.states)
    total = groups.arrival_s.size
    last_arrival = float(groups.arrival_s[-1]) if total else 0.0
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
            arrived = np.arange(lo, hi)  # in arrival order, each group's in one append
            for group in np.unique(groups.group_R[arrived]):
                groups.states[group].arrive(arrived[groups.group_R[arrived] == group])
                planner.arrived(int(group))
            if not wake[0].triggered:
                wake[0].succeed()

    def next_arrival() -> float:
        index = int(np.searchsorted(groups.arrival_s, env.now, side="right"))
        return float(groups.arrival_s[index]) if index < total else np.inf

    def engine() -> Generator[simpy.Event, None, None]:
        nonlocal events
        states = groups.states
        while groups.done < total:
            plans, repeats = planner.plans(lambda state: groups.oldest_wait(state, env.now))
            if all(p.empty for p in plans):
                waits = [groups.oldest_wait(s, env.now) for s in states]
                admits = [scheduler.admit_in_s(s, w) for s, w in zip(states, waits, strict=True)]
                soonest = min((a for a in admits if a is not None), default=None)
                if wake[0].triggered:
                    wake[0] = env.event()
                # a hair past the timeout, so that rounding cannot leave the wait just short
                later = [] if soonest is None else [env.timeout(max(soonest, 0.0) + _HAIR_S)]
                pending = [wake[0], *later]
                yield env.any_of(pending)
                continue
            start, until = env.now, next_arrival() - env.now
            shape = stepper.shape(plans)
            timed = stretch(stepper, shape, repeats, until).records
            latency_n = timed.latency_s
            timed.start_s[:] = start + np.concatenate([[0.0], np.cumsum(latency_n)[:-1]])
            steps.append(timed)
            if on_plans is not None:
                on_plans(plans, latency_n.size)
            groups.schedule(plans, start)
            outcomes = [
                advance(s, p, latency_n.size)
                for s, p in zip(states, plans, strict=True)
                if not p.empty or p.preempted.size
            ]
            planner.ran(latency_n.size)
            prefill, decode = int(shape.prefill_G.sum()), int(shape.decode_G.sum())
            groups.record_queue(prefill, decode, plans, latency_n.size)
            yield env.timeout(float(latency_n.sum()))
            events += 1
            groups.emit(start, latency_n, outcomes)
            if on_progress is not None:
                on_progress(round(float(env.now), 1), round(max(last_arrival, float(env.now)), 1))

    env.process(arrivals())
    env.process(engine())
    env.run()
    serving = groups.records(int(kv.blocks_A.sum()), env.now, scenario.slo)
    all_steps = StepRecords.concat(steps) if steps else StepRecords.empty(stepper.layers)
    return RunRecords(
        scenario=scenario.name,
        executor="sim",
        device=scenario.cluster.device.name,
        gpus=scenario.cluster.gpus,
        phase="serving",
        steps=all_steps,
        spans=_step_spans(all_steps, serving, scenario.cluster.gpus, trace_steps),
        devices=_devices(scenario, kv, stepper),
        placement=scenario.policies.placement.name,
        routing_resolution=stepper.routing.resolution,
        phy2log_LU=plan.phy2log_LU,
        owner_LU=plan.owner_LU,
        wall_seconds=time.perf_counter() - wall_start,
        events=events,
        serving=serving,
    )


def _devices(scenario: Scenario, kv: KVCache, stepper: Stepper) -> DeviceRecords:
    """Per GPU: weights, the KV cache as reserved (its group's, its share of the heads), the
    activation peak it leaves room for, its expert rank's tokens and expert weights."""
    params, layout = scenario.policies.scheduler, Layout.of(scenario)
    blocks_G = np.repeat(kv.blocks_A, layout.attention_tp)
    return DeviceRecords(
        capacity_bytes=scenario.cluster.device.memory.capacity,
        weights_bytes=kv.weights_G,
        kv_cache_bytes=blocks_G * params.block_tokens * kv_bytes_per_token(scenario),
        activation_peak_bytes=kv.activation_G,
        expert_tokens_LG=layout.share_gpus(stepper.expert_tokens_LG),
        expert_weights_bytes=layout.to_gpus(
            expert_weights_bytes(layout.view(scenario), stepper.plan)
        ),
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
