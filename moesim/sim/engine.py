"""The SimPy model of a cluster running a scenario, step after step.

A step is a lock-step stretch: its duration follows from arrays (``chunk.time_chunk``), so the
inference process advances SimPy time by one timeout per step and emits records; routing and
durations are computed for a chunk of steps at once. With expert buffering, the caches couple
the steps, and each step's duration comes from the cache decisions and the copy engines'
clocks (``buffering.Buffering``) before its timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import numpy as np
import simpy

from moesim.config import GATING, OVERLAP, Scenario
from moesim.errors import MoesimError
from moesim.hardware import DeviceCosts, build_topology
from moesim.metrics import DeviceRecords, RunRecords, SpanRecords, StepRecords
from moesim.policies import (
    GatingOutcome,
    PlacementPlan,
    plan_placement,
    request_sequences,
    warmup_steps,
)
from moesim.sim.buffering import Buffering
from moesim.sim.chunk import time_chunk
from moesim.sim.layout import Layout
from moesim.sim.local_work import lm_head_tokens, local_work
from moesim.sim.memory import (
    dense_activation_bytes,
    expert_weights_bytes,
    kv_cache_bytes,
    weights_bytes,
)
from moesim.sim.timeline import step_spans
from moesim.workload import StepChunk, routing_chunks, tokens_per_gpu

__all__ = ["OutOfMemoryError", "simulate"]

StepCallback = Callable[[int, int], None]
GIB = 2.0**30


class OutOfMemoryError(MoesimError):
    """The weights and KV cache alone exceed a GPU's memory: nothing to simulate."""


@dataclass
class _Collected:
    steps: list[StepRecords]
    spans: list[SpanRecords]
    activation_G: np.ndarray
    expert_tokens_LG: np.ndarray
    events: int = 0


@dataclass(frozen=True)
class _Gated:
    """A chunk of measured steps: routing in placement slots and what gating makes of it."""

    chunk: StepChunk
    outcome: GatingOutcome
    units_NLTK: np.ndarray | None
    counts_NLGU: np.ndarray | None


_REPLICA_STREAM = 3  # spawn key of the count-level split of tokens over expert replicas


def _gated(scenario: Scenario, plan: PlacementPlan, tokens_G: np.ndarray) -> Iterator[_Gated]:
    """The measured steps' routing in placement slots, and what gating makes of it."""
    gating = GATING.build(scenario.policies.gating)
    source_T = None
    top_k = scenario.model.top_k
    for chunk in routing_chunks(scenario, warmup_steps(scenario)):
        if chunk.counts_NLGE is not None:
            key = (_REPLICA_STREAM, chunk.first_step)
            rng = np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=key))
            counts = plan.to_unit_counts(chunk.counts_NLGE, rng)
            yield _Gated(chunk, gating.gate_counts(counts, tokens_G, top_k), None, counts)
        else:
            if source_T is None:
                source_T = np.repeat(np.arange(tokens_G.size), tokens_G)
            ids = plan.to_units(chunk.expert_ids_NLTK)
            yield _Gated(chunk, gating.gate(ids, source_T, plan.gpus, plan.units), ids, None)


def _on_gpus(spans: SpanRecords, expert_tp: int) -> SpanRecords:
    """Spans of expert ranks on each of their GPUs (which run them in lock step)."""
    if expert_tp == 1 or spans.device.size == 0:
        return spans
    member_S = np.tile(np.arange(expert_tp), spans.device.size)
    names = SpanRecords.__dataclass_fields__
    fields = {name: np.repeat(getattr(spans, name), expert_tp) for name in names}
    fields["device"] = fields["device"] * expert_tp + member_S
    return SpanRecords(**fields)


def _check_resident_set(scenario: Scenario, resident_G: np.ndarray) -> None:
    capacity = scenario.cluster.device.memory.capacity
    worst = int(np.argmax(resident_G))
    if resident_G[worst] > capacity:
        raise OutOfMemoryError(
            f"out of memory: GPU {worst} holds {resident_G[worst] / GIB:.2f} GiB of weights and "
            f"KV cache, more than its {capacity / GIB:.2f} GiB"
        )


def simulate(
    scenario: Scenario, *, trace_steps: int = 0, on_step: StepCallback | None = None
) -> RunRecords:
    """Run ``scenario`` through the simulator; ``on_step(done, total)`` reports progress."""
    wall_start = time.perf_counter()
    model, cluster, workload = scenario.model, scenario.cluster, scenario.workload
    gpus = cluster.gpus
    costs = DeviceCosts.from_profile(cluster.device, model.dtype)
    layout = Layout.of(scenario)
    ranks = layout.view(scenario)  # the devices of the MoE layers: GPUs, or expert ranks
    topology = build_topology(cluster, layout.expert_tp)
    layers = model.moe_layers(scenario.stack())
    plan = plan_placement(ranks)
    gpu_tokens_G = tokens_per_gpu(workload.tokens_per_step, gpus)
    gpu_source_T = np.repeat(np.arange(gpus), gpu_tokens_G)
    tokens_G = layout.rank_sum(gpu_tokens_G)
    source_T = gpu_source_T // layout.expert_tp
    weights_G = weights_bytes(scenario, plan)
    kv_G = kv_cache_bytes(scenario, gpu_tokens_G)
    _check_resident_set(scenario, weights_G + kv_G)
    buffering = None
    if scenario.policies.cache.name != "none":
        future = None
        if scenario.policies.cache.name == "belady":  # the offline optimum reads ahead
            needed = [g.outcome.tokens_NLE > 0 for g in _gated(scenario, plan, tokens_G)]
            future = request_sequences(np.concatenate(needed), plan) if needed else None
        buffering = Buffering(scenario, plan, future)
    collected = _Collected(
        [],
        [],
        dense_activation_bytes(scenario, tokens_G, lm_head_tokens(scenario, tokens_G, source_T)),
        np.zeros((layers, layout.ranks)),
    )
    if buffering is not None and buffering.active:  # one expert in flight into its slot
        collected.activation_G = collected.activation_G + buffering.expert_bytes

    micro_batches = OVERLAP.build(scenario.policies.overlap).micro_batches

    def run(env: simpy.Environment) -> Generator[simpy.Event, None, None]:
        local = micro_batch = None
        for gated in _gated(ranks, plan, tokens_G):
            chunk, outcome = gated.chunk, gated.outcome
            if local is None:
                work = (
                    scenario,
                    costs,
                    gpu_tokens_G,
                    gpu_source_T,
                    outcome.capacity_G,
                    outcome.einsum_dispatch,
                    plan.units,
                )
                local = local_work(*work)
                if micro_batches > 1:
                    micro_batch = tuple(local_work(*work, parts=2, part=i) for i in (0, 1))
            timing = time_chunk(
                ranks,
                costs,
                topology,
                plan,
                local,
                outcome,
                tokens_G,
                units_NLTK=gated.units_NLTK,
                counts_NLGU=gated.counts_NLGU,
                source_T=source_T,
                micro_batch=micro_batch,
            )
            n = chunk.steps
            latency_N, breakdown_NP = timing.latency_N.copy(), timing.breakdown_NP.copy()
            cache_NC = np.zeros((n, 4), dtype=np.int64)  # hits, misses, evictions, copies
            if buffering is None and chunk.first_step >= trace_steps:
                # A lock-step stretch: the chunk's durations are known, one timeout covers it.
                start_N = np.cumsum(np.concatenate([[env.now], latency_N]))[:-1]
                yield env.timeout(float(start_N[-1] + latency_N[-1] - env.now))
                collected.events += 1
                if on_step is not None:
                    on_step(chunk.first_step + n, workload.steps)
            else:
                start_N = np.empty(n)
                for index in range(n):
                    step = chunk.first_step + index
                    start_N[index] = env.now
                    if buffering is not None:
                        latency_N[index], stats = buffering.step(
                            index, env.now, local, timing, breakdown_NP[index]
                        )
                        cache_NC[index] = (
                            stats.hits,
                            stats.misses,
                            stats.evictions,
                            stats.misses + stats.copies,
                        )
                    if step < trace_steps:
                        buffered = buffering is not None
                        collected.spans.append(
                            step_spans(
                                step,
                                env.now,
                                index,
                                local,
                                timing,
                                buffering.expert_LG if buffered else None,
                                buffering.copy_spans if buffered else None,
                            )
                        )
                    yield env.timeout(latency_N[index])
                    collected.events += 1
                    if on_step is not None:
                        on_step(step + 1, workload.steps)
            routed = layers * workload.tokens_per_step * model.top_k
            expert_bytes = model.expert_params * model.dtype_bytes
            collected.steps.append(
                layout.gpu_steps(
                    timing.records(
                        start_N,
                        workload.tokens_per_step,
                        routed,
                        latency_N=latency_N,
                        breakdown_NP=breakdown_NP,
                        cache_NC=cache_NC,
                        expert_bytes=float(expert_bytes),
                    )
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
        weights_bytes=weights_G,
        kv_cache_bytes=kv_G,
        activation_peak_bytes=layout.to_gpus(collected.activation_G),
        expert_tokens_LG=layout.share_gpus(collected.expert_tokens_LG),
        expert_weights_bytes=layout.to_gpus(expert_weights_bytes(ranks, plan)),
    )
    cache = scenario.policies.cache
    return RunRecords(
        scenario=scenario.name,
        executor="sim",
        device=cluster.device.name,
        gpus=gpus,
        phase=workload.phase,
        steps=StepRecords.concat(collected.steps),
        devices=devices,
        placement=scenario.policies.placement.name,
        routing_resolution=scenario.routing_resolution(),
        cache=None if cache.name == "none" else cache.model_dump(),
        phy2log_LU=plan.phy2log_LU,
        owner_LU=plan.owner_LU,
        spans=_on_gpus(SpanRecords.concat(collected.spans), layout.expert_tp),
        wall_seconds=time.perf_counter() - wall_start,
        events=collected.events,
        output_tokens=_output_tokens(scenario) * sum(s.latency_s.size for s in collected.steps),
    )


def _output_tokens(scenario: Scenario) -> float:
    """Tokens one step emits: none from an encoder's prefill."""
    return 0.0 if scenario.stack() == "encoder" else scenario.workload.output_tokens_per_step
