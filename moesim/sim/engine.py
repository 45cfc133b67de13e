"""The SimPy model of a cluster running a scenario, step after step.

A step is a lock-step stretch: its duration follows from arrays (``chunk.time_chunk``), so the
inference process advances SimPy time by one timeout per step and emits records; routing and
durations are computed for a chunk of steps at once. Processes that overlap with the step
(copy engines, request arrivals) join the same environment as separate SimPy processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import simpy

from moesim.config import GATING, Scenario
from moesim.hardware import DeviceCosts, build_topology
from moesim.metrics import DeviceRecords, RunRecords, SpanRecords, StepRecords
from moesim.policies import plan_placement, warmup_steps
from moesim.sim.chunk import time_chunk
from moesim.sim.local_work import local_work
from moesim.sim.memory import dense_activation_bytes, kv_cache_bytes, weights_bytes
from moesim.sim.timeline import step_spans
from moesim.workload import routing_chunks, tokens_per_gpu

__all__ = ["simulate"]

StepCallback = Callable[[int, int], None]


@dataclass
class _Collected:
    steps: list[StepRecords]
    spans: list[SpanRecords]
    activation_G: np.ndarray
    expert_tokens_LG: np.ndarray
    events: int = 0


def simulate(
    scenario: Scenario, *, trace_steps: int = 0, on_step: StepCallback | None = None
) -> RunRecords:
    """Run ``scenario`` through the simulator; ``on_step(done, total)`` reports progress."""
    wall_start = time.perf_counter()
    model, cluster, workload = scenario.model, scenario.cluster, scenario.workload
    gpus = cluster.gpus
    costs = DeviceCosts.from_profile(cluster.device, model.dtype)
    topology = build_topology(cluster)
    layers = model.moe_layers(scenario.stack())
    plan = plan_placement(scenario)
    gating = GATING.build(scenario.policies.gating)
    tokens_G = tokens_per_gpu(workload.tokens_per_step, gpus)
    source_T = np.repeat(np.arange(gpus), tokens_G)
    collected = _Collected(
        [], [], dense_activation_bytes(scenario, tokens_G), np.zeros((layers, gpus))
    )

    def run(env: simpy.Environment) -> Generator[simpy.Event, None, None]:
        local = None
        for chunk in routing_chunks(scenario, warmup_steps(scenario)):
            ids = plan.to_units(chunk.expert_ids_NLTK)
            outcome = gating.gate(ids, source_T, gpus, plan.units)
            if local is None:
                local = local_work(
                    scenario, costs, tokens_G, source_T, outcome.capacity_G, outcome.einsum_dispatch
                )
            timing = time_chunk(
                scenario, costs, topology, plan, local, ids, outcome, tokens_G, source_T
            )
            start_N = np.empty(chunk.steps)
            for index in range(chunk.steps):
                step = chunk.first_step + index
                start_N[index] = env.now
                if step < trace_steps:
                    collected.spans.append(step_spans(step, env.now, index, local, timing))
                yield env.timeout(timing.latency_N[index])
                collected.events += 1
                if on_step is not None:
                    on_step(step + 1, workload.steps)
            routed = layers * workload.tokens_per_step * model.top_k
            collected.steps.append(
                StepRecords(
                    start_s=start_N,
                    latency_s=timing.latency_N,
                    tokens=np.full(chunk.steps, workload.tokens_per_step),
                    routed=np.full(chunk.steps, routed),
                    processed=timing.processed_N,
                    dropped=routed - timing.processed_N,
                    padded=timing.padded_N,
                    alltoall_bytes_NK=timing.alltoall_bytes_NK,
                    load_imbalance=timing.load_imbalance_N,
                    breakdown_NP=timing.breakdown_NP,
                    busiest_tokens_NL=timing.tokens_NLG.max(axis=-1, initial=0),
                    expert_tokens_NL=timing.tokens_NLG.sum(axis=-1),
                )
            )
            collected.expert_tokens_LG += timing.tokens_NLG.sum(axis=0)
            collected.activation_G = np.maximum(
                collected.activation_G, timing.activation_NG.max(axis=0)
            )

    env = simpy.Environment()
    env.process(run(env))
    env.run()
    devices = DeviceRecords(
        capacity_bytes=cluster.device.memory.capacity,
        weights_bytes=weights_bytes(scenario, plan),
        kv_cache_bytes=kv_cache_bytes(scenario, tokens_G),
        activation_peak_bytes=collected.activation_G,
        expert_tokens_LG=collected.expert_tokens_LG,
    )
    return RunRecords(
        scenario=scenario.name,
        executor="sim",
        device=cluster.device.name,
        gpus=gpus,
        phase=workload.phase,
        steps=StepRecords.concat(collected.steps),
        devices=devices,
        placement=scenario.policies.placement.name,
        phy2log_LU=plan.phy2log_LU,
        owner_LU=plan.owner_LU,
        spans=SpanRecords.concat(collected.spans),
        wall_seconds=time.perf_counter() - wall_start,
        events=collected.events,
    )
