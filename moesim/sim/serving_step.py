"""The duration of one serving step: the fixed-batch layer model on the step's actual tokens.

A serving step mixes prompt chunks and decodes of requests that live on different GPUs (each
GPU is a data-parallel attention group holding its requests' KV cache). Per GPU, prefill and
decode attention are priced apart, as engines run them (a variable-length prefill kernel, a
paged decode kernel): prefill tokens attend over the mean position of their chunk, decode
tokens read their request's whole context. Everything after attention (dense FFNs, router,
gating, all-to-alls, experts, LM head) is the fixed-batch model of ``chunk.time_chunk`` for the
step's tokens, routed by the scenario's synthetic router.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import GATING, Scenario
from moesim.hardware import DeviceCosts, Topology, build_topology
from moesim.metrics import StepRecords
from moesim.policies import DynamicGating, PlacementPlan, StaticGating, StepPlan
from moesim.sim.chunk import ChunkTiming, time_chunk
from moesim.sim.layer_costs import attention_time
from moesim.sim.local_work import expert_table, work_around
from moesim.sim.serving_groups import Groups
from moesim.workload import SyntheticRouter

_SERVING_ROUTING = 5  # spawn key of the serving loop's routing stream

__all__ = ["StepShape", "Stepper", "step_shape", "stretch", "time_step"]


@dataclass(frozen=True)
class StepShape:
    """One step's work per GPU ``G``: prefill tokens and the mean position they attend over,
    decode tokens and the mean context they read, positions that need logits."""

    prefill_G: np.ndarray
    prefill_context_G: np.ndarray
    decode_G: np.ndarray
    decode_context_G: np.ndarray
    logits_G: np.ndarray

    @property
    def tokens_G(self) -> np.ndarray:
        return self.prefill_G + self.decode_G

    @property
    def source_T(self) -> np.ndarray:
        """The GPU of each of the step's tokens, GPU by GPU."""
        return np.repeat(np.arange(self.tokens_G.size), self.tokens_G)


def step_shape(
    gpu_R: np.ndarray,
    new_tokens_R: np.ndarray,
    context_R: np.ndarray,
    is_prefill_R: np.ndarray,
    logits_R: np.ndarray,
    gpus: int,
) -> StepShape:
    """The shape of a step that runs requests ``R`` on GPUs ``gpu_R``: ``new_tokens_R`` each
    (a prompt chunk, or 1 to decode) after ``context_R`` tokens already in their KV cache;
    ``logits_R`` marks those that sample a token in this step."""
    new = np.asarray(new_tokens_R, dtype=np.int64)
    context = np.asarray(context_R, dtype=np.float64)
    prefill = np.asarray(is_prefill_R, dtype=bool)
    # a chunk of n tokens after c attends over c + 1 .. c + n positions: (n + 1) / 2 + c mean
    positions = np.where(prefill, new * (context + (new + 1) / 2.0), new * (context + 1.0))

    def per_gpu(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        return np.bincount(gpu_R[where], weights=values[where], minlength=gpus)

    prefill_G = per_gpu(new, prefill).astype(np.int64)
    decode_G = per_gpu(new, ~prefill).astype(np.int64)
    return StepShape(
        prefill_G=prefill_G,
        prefill_context_G=_mean(per_gpu(positions, prefill), prefill_G),
        decode_G=decode_G,
        decode_context_G=_mean(per_gpu(positions, ~prefill), decode_G),
        logits_G=np.bincount(gpu_R[np.asarray(logits_R, bool)], minlength=gpus),
    )


def _mean(total_G: np.ndarray, count_G: np.ndarray) -> np.ndarray:
    return np.divide(total_G, count_G, out=np.zeros(total_G.shape), where=count_G > 0)


def time_step(
    scenario: Scenario,
    costs: DeviceCosts,
    topology: Topology,
    plan: PlacementPlan,
    gating: StaticGating | DynamicGating,
    shape: StepShape,
    expert_ids_NLTK: np.ndarray,
    expert_by_rows: np.ndarray | None = None,
) -> ChunkTiming:
    """The timing of ``N`` steps of ``shape`` whose tokens (GPU by GPU, as ``shape.source_T``)
    route to ``expert_ids_NLTK``, gated by ``gating``: step ``n`` is the shape ``n`` decodes
    later, every decode's context ``n`` tokens longer (a decode stretch; ``N = 1``: the
    shape itself)."""
    model = scenario.model
    tokens_G = shape.tokens_G
    later_N1 = np.arange(expert_ids_NLTK.shape[0])[:, None]
    attention_NG = attention_time(
        model, costs, shape.prefill_G[None], shape.prefill_context_G[None], False
    ) + attention_time(
        model, costs, shape.decode_G[None], shape.decode_context_G[None] + later_N1, True
    )
    units = plan.to_units(expert_ids_NLTK)
    outcome = gating.gate(units, shape.source_T, plan.gpus, plan.units)
    static = outcome.capacity_G is not None
    needed = max(int(tokens_G.sum()), int(outcome.capacity_G.sum()) if static else 0)
    if expert_by_rows is None or expert_by_rows.size <= needed:
        expert_by_rows = expert_table(scenario, costs, tokens_G, outcome.capacity_G)
    local = work_around(
        scenario,
        costs,
        tokens_G,
        attention_NG[0],
        shape.logits_G,
        outcome.capacity_G,
        outcome.einsum_dispatch,
        plan.units,
        expert_by_rows,
    )
    return time_chunk(
        scenario,
        costs,
        topology,
        plan,
        local,
        outcome,
        tokens_G,
        units_NLTK=units,
        source_T=shape.source_T,
        attention_NG=attention_NG,
    )


class Stepper:
    """Times one step of the groups' plans: the plans' tokens and contexts, routed afresh."""

    def __init__(
        self, scenario: Scenario, groups: Groups, plan: PlacementPlan, most_rows: int
    ) -> None:
        """``most_rows``: the most rows one expert can get in a step (its time is tabulated)."""
        model, cluster = scenario.model, scenario.cluster
        self.scenario, self.groups = scenario, groups
        self.gpus = cluster.gpus
        self.costs = DeviceCosts.from_profile(cluster.device, model.dtype)
        self.topology = build_topology(cluster)
        self.plan = plan
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
        self.expert_by_rows = expert_table(scenario, self.costs, np.array([most_rows]), None)

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


def stretch(stepper: Stepper, plans: list[StepPlan], stretch: int, until: float) -> StepRecords:
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
    return records.head(keep)
