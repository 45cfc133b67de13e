"""The duration of one serving step: the fixed-batch layer model on the step's actual tokens.

A serving step mixes prompt chunks and decodes of requests that live in different
data-parallel attention groups ``A`` (a GPU each, or ``attention_tp`` GPUs that split its
heads), each holding its requests' KV cache. Per group, prefill and decode attention are
priced apart, as engines run them (a variable-length prefill kernel, a paged decode kernel):
prefill tokens attend over the mean position of their chunk, decode tokens read their
request's whole context. A group's tokens are shared evenly by its GPUs beyond attention
(the sources of the all-to-alls); everything after attention (dense FFNs, router, gating,
all-to-alls, experts, LM head, all-reduces, micro-batch overlap) is the fixed-batch model of
``chunk.time_chunk`` on the layout's expert ranks (``sim/layout``), routed as counts per
source and expert (``serving_routing``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.config import GATING, OVERLAP, Scenario
from moesim.hardware import DeviceCosts, Topology, build_topology
from moesim.metrics import StepRecords
from moesim.policies import DynamicGating, PlacementPlan, StaticGating, StepPlan
from moesim.sim.chunk import ChunkTiming, time_chunk
from moesim.sim.layer_costs import attention_time
from moesim.sim.layout import Layout
from moesim.sim.local_work import LocalWork, expert_table, share, work_around
from moesim.sim.serving_groups import Groups
from moesim.sim.serving_routing import ServingRouting

__all__ = [
    "StepShape",
    "Stepper",
    "Timed",
    "gpu_shares",
    "sources",
    "step_shape",
    "stretch",
    "time_step",
]

_CALL_CELLS = 1 << 22  # (step, layer, GPU, expert) counts timed in one call at most
_CALL_ASSIGNMENTS = 1 << 23  # and token-expert assignments drawn for it
_GUESS_MARGIN = 1.05  # steps timed past those the last latency predicts, as a share


@dataclass(frozen=True)
class StepShape:
    """One step's work per attention group (``_G`` arrays: a GPU each unless attention is
    tensor-parallel): prefill tokens and the mean position they attend over, decode tokens
    and the mean context they read, positions that need logits."""

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
        """The group of each of the step's tokens, group by group."""
        return np.repeat(np.arange(self.tokens_G.size), self.tokens_G)

    def half(self, part: int) -> StepShape:
        """Micro-batch ``part`` of two: its half of every group's tokens (the first gets the
        odd one)."""
        return replace(
            self,
            prefill_G=share(self.prefill_G, 2, part),
            decode_G=share(self.decode_G, 2, part),
            logits_G=share(self.logits_G, 2, part),
        )


def gpu_shares(values_A: np.ndarray, attention_tp: int) -> np.ndarray:
    """Per GPU, its share of its attention group's ``values`` (equal, the first ones +1)."""
    if attention_tp == 1:
        return values_A
    base, extra = np.divmod(np.asarray(values_A, dtype=np.int64), attention_tp)
    return (base[:, None] + (np.arange(attention_tp)[None] < extra[:, None])).ravel()


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
    expert_ids_NLTK: np.ndarray | None = None,
    expert_by_rows: np.ndarray | None = None,
    *,
    counts_NLGE: np.ndarray | None = None,
    replica_rng: np.random.Generator | None = None,
) -> ChunkTiming:
    """The timing of ``N`` steps of ``shape`` whose tokens route to ``expert_ids_NLTK``
    (source by source, the layout's expert ranks: ``sources``) or, at count level,
    ``counts_NLGE`` (tokens each source sends each expert; ``replica_rng`` splits them over
    replicas), gated by ``gating`` over ``plan`` (placed on the ranks, ``topology`` theirs):
    step ``n`` is the shape ``n`` decodes later, every decode's context ``n`` tokens longer
    (a decode stretch; ``N = 1``: the shape itself)."""
    model, layout = scenario.model, Layout.of(scenario)
    ranks = layout.view(scenario)
    routing = expert_ids_NLTK if counts_NLGE is None else counts_NLGE
    attention_NG = _attention(scenario, costs, shape, routing.shape[0])
    gpu_tokens_G = gpu_shares(shape.tokens_G, layout.attention_tp)
    tokens_V = layout.rank_sum(gpu_tokens_G)
    units = counts = source_T = None
    if counts_NLGE is None:
        units = plan.to_units(expert_ids_NLTK)
        source_T = np.repeat(np.arange(tokens_V.size), tokens_V)
        outcome = gating.gate(units, source_T, plan.gpus, plan.units)
    else:
        counts = plan.to_unit_counts(counts_NLGE, replica_rng)
        outcome = gating.gate_counts(counts, tokens_V, model.top_k)
    static = outcome.capacity_G is not None
    needed = max(int(tokens_V.sum()), int(outcome.capacity_G.sum()) if static else 0)
    if expert_by_rows is None or expert_by_rows.size <= needed:
        expert_by_rows = expert_table(ranks, costs, tokens_V, outcome.capacity_G)

    def local(step: StepShape, attention_G: np.ndarray, part: int | None = None) -> LocalWork:
        capacity = outcome.capacity_G
        if capacity is not None and part is not None:
            capacity = share(capacity, 2, part)
        return work_around(
            scenario,
            costs,
            gpu_shares(step.tokens_G, layout.attention_tp),
            attention_G,
            gpu_shares(step.logits_G, layout.attention_tp),
            capacity,
            outcome.einsum_dispatch,
            plan.units,
            expert_by_rows,
        )

    micro_batch = micro_attention_NG = None
    if OVERLAP.build(scenario.policies.overlap).micro_batches > 1:
        halves = [shape.half(part) for part in (0, 1)]
        attention_M = [_attention(scenario, costs, h, routing.shape[0]) for h in halves]
        micro_batch = tuple(
            local(h, a[0], part)
            for part, (h, a) in enumerate(zip(halves, attention_M, strict=True))
        )
        micro_attention_NG = tuple(layout.rank_max(a) for a in attention_M)
    return time_chunk(
        ranks,
        costs,
        topology,
        plan,
        local(shape, attention_NG[0]),
        outcome,
        tokens_V,
        units_NLTK=units,
        counts_NLGU=counts,
        source_T=source_T,
        attention_NG=layout.rank_max(attention_NG),
        micro_batch=micro_batch,
        micro_attention_NG=micro_attention_NG,
    )


def sources(scenario: Scenario, shape: StepShape) -> np.ndarray:
    """The step's tokens per source of the all-to-alls: the layout's expert ranks."""
    layout = Layout.of(scenario)
    return layout.rank_sum(gpu_shares(shape.tokens_G, layout.attention_tp))


def _attention(scenario: Scenario, costs: DeviceCosts, shape: StepShape, steps: int) -> np.ndarray:
    """``attention_NG``: each GPU's attention block in each step of a decode stretch of
    ``shape`` (decode contexts one longer each step), on its group's tokens and heads."""
    model, tp = scenario.model, scenario.cluster.parallel.attention_tp

    def on_gpus(values_A: np.ndarray) -> np.ndarray:
        return np.repeat(values_A, tp)[None]

    later_N1 = np.arange(steps)[:, None]
    prefill = attention_time(
        model, costs, on_gpus(shape.prefill_G), on_gpus(shape.prefill_context_G), False, tp
    )
    decode = attention_time(
        model, costs, on_gpus(shape.decode_G), on_gpus(shape.decode_context_G) + later_N1, True, tp
    )
    return prefill + decode


@dataclass(frozen=True)
class Timed:
    """Steps timed together: their rows and the expert tokens each GPU got (``tokens_NLG``)."""

    records: StepRecords
    tokens_NLG: np.ndarray

    @staticmethod
    def concat(parts: list[Timed]) -> Timed:
        if len(parts) == 1:
            return parts[0]
        records = StepRecords.concat([p.records for p in parts])
        return Timed(records, np.concatenate([p.tokens_NLG for p in parts]))

    def head(self, steps: int) -> Timed:
        return Timed(self.records.head(steps), self.tokens_NLG[:steps])


class Stepper:
    """Times steps of the groups' plans: the plans' tokens and contexts, on the serving
    routing stream."""

    def __init__(
        self, scenario: Scenario, groups: Groups, plan: PlacementPlan, most_rows: int
    ) -> None:
        """``most_rows``: the most rows one expert can get in a step (its time is tabulated)."""
        model, cluster = scenario.model, scenario.cluster
        layout = Layout.of(scenario)
        ranks = layout.view(scenario)  # the sources and destinations of the all-to-alls
        self.scenario, self.groups, self.layout = scenario, groups, layout
        self.ranks = layout.ranks
        self.costs = DeviceCosts.from_profile(cluster.device, model.dtype)
        self.topology = build_topology(cluster, layout.expert_tp)
        self.plan = plan
        self.gating = GATING.build(scenario.policies.gating)
        self.layers = model.moe_layers(scenario.stack())
        self.routing = ServingRouting(ranks, self.layers)
        self.expert_tokens_LG = np.zeros((self.layers, self.ranks))
        self.expert_by_rows = expert_table(ranks, self.costs, np.array([most_rows]), None)
        self.decode_latency_s: float | None = None  # of the last decode step timed

    def most_steps(self, shape: StepShape) -> int:
        """Steps of ``shape`` timed in one call at most (what bounds its memory)."""
        model = self.scenario.model
        cells = max(1, self.layers * self.ranks * model.num_experts)
        assignments = max(1, self.layers * int(shape.tokens_G.sum()) * model.top_k)
        return max(1, min(_CALL_CELLS // cells, _CALL_ASSIGNMENTS // assignments))

    def shape(self, plans: list[StepPlan]) -> StepShape:
        """The shape of a step of every group's plan."""
        groups = self.groups
        request = np.concatenate([p.request for p in plans])
        new_tokens = np.concatenate([p.new_tokens for p in plans])
        is_prefill = np.concatenate([p.is_prefill for p in plans])
        # a prefill samples its first token in the step that completes what it must prefill
        logits = ~is_prefill
        if is_prefill.any():
            logits = logits | np.concatenate(
                [
                    p.context + p.new_tokens >= s.prefill_tokens_R[p.request]
                    for s, p in zip(groups.states, plans, strict=True)
                ]
            )
        return step_shape(
            groups.group_R[request],
            new_tokens,
            np.concatenate([p.context for p in plans]),
            is_prefill,
            logits,
            len(groups.states),
        )

    def time(self, shape: StepShape, steps: int, ahead: int = 0) -> Timed:
        """``steps`` steps of ``shape``, ``ahead`` steps into its decode stretch (each step's
        decode contexts one longer than the last's), on routing drawn ``ahead`` steps past
        the committed ones."""
        if ahead:
            shape = replace(shape, decode_context_G=shape.decode_context_G + ahead)
        tokens = int(shape.tokens_G.sum())
        counts = self.routing.draw(sources(self.scenario, shape), steps, ahead)
        replicas = None
        if self.plan.units != self.plan.num_experts:
            replicas = self.routing.replica_rng(self.routing.step + ahead)
        timing = time_step(
            self.scenario,
            self.costs,
            self.topology,
            self.plan,
            self.gating,
            shape,
            expert_by_rows=self.expert_by_rows,
            counts_NLGE=counts,
            replica_rng=replicas,
        )
        if not shape.prefill_G.any():
            self.decode_latency_s = float(timing.latency_N[-1])
        routed = self.layers * tokens * self.scenario.model.top_k
        records = timing.records(np.zeros(steps), tokens, routed)
        return Timed(self.layout.gpu_steps(records), timing.tokens_NLG)

    def keep(self, timed: Timed, shape: StepShape) -> None:
        """Commit the steps of ``timed`` (the first ones drawn) as run."""
        self.routing.commit(timed.tokens_NLG.shape[0], sources(self.scenario, shape))
        self.expert_tokens_LG += timed.tokens_NLG.sum(axis=0)


def stretch(stepper: Stepper, shape: StepShape, stretch: int, until: float) -> Timed:
    """The steps of a decode stretch of at most ``stretch`` steps of ``shape`` that start
    before ``until`` seconds from now (the next arrival, which may change the plans), timed
    in as few calls as the last decode step's latency predicts; they are committed."""
    parts: list[Timed] = []
    elapsed, done = 0.0, 0
    guess_s = stepper.decode_latency_s if stretch > 1 else None
    most = stepper.most_steps(shape)
    while done == 0 or (done < stretch and elapsed < until):
        more = 1
        if guess_s is not None:  # a few steps past the guess, rather than one call more
            ahead = (until - elapsed) / max(guess_s, 1e-12) * _GUESS_MARGIN
            more = int(min(stretch - done, most, ahead + 2))
        parts.append(stepper.time(shape, more, done))
        latency = parts[-1].records.latency_s
        elapsed += float(latency.sum())
        done += more
        guess_s = float(latency[-1])
    timed = Timed.concat(parts)
    ends = np.cumsum(timed.records.latency_s)
    keep = min(int(np.searchsorted(ends, until, side="left")) + 1, ends.size)
    timed = timed.head(keep)
    stepper.keep(timed, shape)
    return timed
