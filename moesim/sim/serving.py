"""The serving loop: requests arrive and a router gives each to a data-parallel attention
group (``policies.router``), which schedules its own; each pool's steps run across its groups
at once (``serving_pool``).

Colocated serving is one pool. A disaggregated cluster (``cluster.pools``) has a prefill pool,
whose requests end with their first token, and a decode pool that receives their KV
(``kv_transfer``) and emits the rest; both run in one SimPy environment, and the run's
records join the two (``serving_disagg``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import numpy as np
import simpy

from moesim.config import PLACEMENT, Scenario, SyntheticRouting
from moesim.errors import ConfigError
from moesim.metrics import DeviceRecords, RunRecords, SpanRecords
from moesim.sim.memory import expert_weights_bytes, kv_bytes_per_token
from moesim.sim.serving_disagg import disaggregated_pools, merged_records
from moesim.sim.serving_pool import PlanCallback, Pool
from moesim.workload import request_table

__all__ = ["PlanCallback", "simulate_serving"]

# (simulated seconds so far, the last arrival's time or now if later): a long run's progress
ProgressCallback = Callable[[float, float], None]


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
    if scenario.cluster.role("prefill") is not None and policies.scheduler.name == "static":
        raise ConfigError(
            None,
            "policies.scheduler",
            "a decode pool takes requests as their KV lands: use continuous or chunked",
        )


def simulate_serving(
    scenario: Scenario,
    *,
    trace_steps: int = 0,
    on_progress: ProgressCallback | None = None,
    on_plans: PlanCallback | None = None,
) -> RunRecords:
    """Serve the scenario's requests; ``on_progress(now, until)`` reports progress in
    simulated seconds (``ProgressCallback``),
    ``on_plans(plans, steps)`` each step's plans as they run (``PlanCallback``, colocated
    serving only); the first ``trace_steps`` steps become spans (each step on every GPU's
    compute stream)."""
    wall_start = time.perf_counter()
    _refuse_unsupported(scenario)
    requests = request_table(scenario)
    env = simpy.Environment()
    total = len(requests)
    last_arrival = float(requests.arrival_s[-1]) if total else 0.0

    def next_arrival() -> float:
        index = int(np.searchsorted(requests.arrival_s, env.now, side="right"))
        return float(requests.arrival_s[index]) if index < total else np.inf

    cluster = scenario.cluster
    handoff = None
    if cluster.role("prefill") is None:
        pools = [Pool(scenario.on(scenario.clusters()[0]), requests, env, next_arrival, total)]
        pools[0].on_plans = on_plans
    else:
        pools, handoff = disaggregated_pools(scenario, requests, env, next_arrival)
    entry = pools[0]

    if on_progress is not None:

        def progressed(*_: object) -> None:
            on_progress(round(float(env.now), 1), round(max(last_arrival, float(env.now)), 1))

        for pool in pools:
            pool.on_steps.append(progressed)

    def arrivals() -> Generator[simpy.Event, None, None]:
        times, first = np.unique(requests.arrival_s, return_index=True)
        bounds = np.append(first, total)
        for at, lo, hi in zip(times, bounds[:-1], bounds[1:], strict=True):
            if at > env.now:
                yield env.timeout(at - env.now)
            entry.arrive(np.arange(lo, hi))  # in arrival order

    env.process(arrivals())
    for pool in pools:
        env.process(pool.run())
    env.run()
    if handoff is None:
        only = pools[0]
        serving = only.groups.records(int(only.kv.blocks_A.sum()), env.now, scenario.slo)
        steps, devices = only.records(), _devices(only)
        phy2log, owner = only.plan.phy2log_LU, only.plan.owner_LU
    else:
        serving, steps = merged_records(pools, handoff, env.now, scenario.slo)
        devices = DeviceRecords.concat([_devices(pool) for pool in pools])
        phy2log = owner = None  # each pool places its own experts
    return RunRecords(
        scenario=scenario.name,
        executor="sim",
        device=cluster.device.name,
        gpus=cluster.gpus,
        phase="serving",
        steps=steps,
        spans=SpanRecords.concat(_pool_spans(pools, trace_steps)),
        devices=devices,
        placement=scenario.policies.placement.name,
        routing_resolution=pools[-1].stepper.routing.resolution,
        phy2log_LU=phy2log,
        owner_LU=owner,
        wall_seconds=time.perf_counter() - wall_start,
        events=sum(pool.events for pool in pools),
        serving=serving,
    )


def _devices(pool: Pool) -> DeviceRecords:
    """Per GPU of ``pool``: weights, the KV cache as reserved (its group's, its share of the
    heads), the activation peak it leaves room for, its expert rank's tokens and expert
    weights."""
    scenario, kv, layout = pool.scenario, pool.kv, pool.layout
    blocks_G = np.repeat(kv.blocks_A, layout.attention_tp)
    block_tokens = scenario.policies.scheduler.block_tokens
    return DeviceRecords(
        capacity_bytes=scenario.cluster.device.memory.capacity,
        weights_bytes=kv.weights_G,
        kv_cache_bytes=blocks_G * block_tokens * kv_bytes_per_token(scenario),
        activation_peak_bytes=kv.activation_G,
        expert_tokens_LG=layout.share_gpus(pool.stepper.expert_tokens_LG),
        expert_weights_bytes=layout.to_gpus(expert_weights_bytes(layout.view(scenario), pool.plan)),
    )


def _pool_spans(pools: list[Pool], traced: int) -> list[SpanRecords]:
    """Each pool's first ``traced`` steps as spans on its GPUs' compute streams (after the
    pools before it), named by what they run (the layers inside a step are not traced)."""
    spans, first_gpu = [], 0
    for pool in pools:
        steps, gpus = pool.records(), pool.gpus
        n = min(traced, steps.latency_s.size)
        if n:
            rows = np.concatenate(pool.groups.rows, axis=1)[:, :n]
            names = np.array([f"step: {p} prefill + {d} decode tokens" for p, d in rows[:2].T])
            spans.append(
                SpanRecords(
                    device=first_gpu + np.repeat(np.arange(gpus), n),
                    stream=np.full(gpus * n, "compute"),
                    name=np.tile(names, gpus),
                    step=np.tile(np.arange(n), gpus),
                    layer=np.full(gpus * n, -1),
                    start_s=np.tile(steps.start_s[:n], gpus),
                    duration_s=np.tile(steps.latency_s[:n], gpus),
                )
            )
        first_gpu += gpus
    return spans
