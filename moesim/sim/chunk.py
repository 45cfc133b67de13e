"""Durations of a chunk of steps: the lock-step composition of local work and collectives.

Shapes: ``N`` steps, ``L`` MoE layers, ``G`` GPUs, ``E`` experts, ``K`` link kinds. An MoE
layer runs: local work (attention, dense FFNs, router) → [count exchange] → dispatch
all-to-all → experts → combine all-to-all; what the all-to-alls cost besides links (a lone
rank's local path, ``LocalWork.alltoall_local_G``) counts with the dispatch. Each collective
starts when its last participant arrives, so a step lasts ``sum_l (max_g pre + count +
dispatch + max_g expert + combine)`` plus the slowest GPU's work after the last MoE layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import Scenario
from moesim.hardware import KINDS, DeviceCosts, Topology
from moesim.metrics import PHASES, StepRecords, load_imbalance
from moesim.policies import GatingOutcome, PlacementPlan
from moesim.sim.local_work import LocalWork, share
from moesim.sim.memory import activation_bytes
from moesim.sim.overlap import TwoBatchTimeline, two_batch
from moesim.sim.traffic import (
    alltoall_time,
    count_exchange_bytes,
    counted_tokens,
    domain_rows,
    routed_tokens,
    static_tokens,
    via_domains,
)

__all__ = ["ChunkTiming", "time_chunk"]

_ALLTOALL = PHASES.index("alltoall")
_COMPUTE = [PHASES.index(p) for p in PHASES if p not in ("alltoall", "transfer")]


@dataclass(frozen=True)
class ChunkTiming:
    """Per step and MoE layer: collective and expert durations (per GPU, and per placement
    slot in ``expert_NLU``, zero where a slot computes nothing), expert tokens per GPU
    (``tokens_NLG``); per step: totals, counts and bytes per link kind (``alltoall_bytes_NK``)."""

    count_NL: np.ndarray
    dispatch_NL: np.ndarray
    combine_NL: np.ndarray
    expert_NLG: np.ndarray
    expert_NLU: np.ndarray
    tokens_NLU: np.ndarray
    latency_N: np.ndarray
    breakdown_NP: np.ndarray
    processed_N: np.ndarray
    padded_N: np.ndarray
    alltoall_bytes_NK: np.ndarray
    tokens_NLG: np.ndarray
    load_imbalance_N: np.ndarray
    activation_NG: np.ndarray
    overlap: TwoBatchTimeline | None = None

    def records(
        self,
        start_N: np.ndarray,
        tokens: int,
        routed: int,
        *,
        latency_N: np.ndarray | None = None,
        breakdown_NP: np.ndarray | None = None,
        cache_NC: np.ndarray | None = None,
        expert_bytes: float = 0.0,
    ) -> StepRecords:
        """The chunk's step rows, each of ``tokens`` sequence tokens and ``routed`` token-
        expert assignments; latency and breakdown where a cache changed them, cache counters
        (hits, misses, evictions, copies of ``expert_bytes`` each) where there is one."""
        n = self.latency_N.size
        cache_NC = np.zeros((n, 4), dtype=np.int64) if cache_NC is None else cache_NC
        return StepRecords(
            start_s=start_N,
            latency_s=self.latency_N if latency_N is None else latency_N,
            tokens=np.full(n, tokens),
            routed=np.full(n, routed),
            processed=self.processed_N,
            dropped=routed - self.processed_N,
            padded=self.padded_N,
            alltoall_bytes_NK=self.alltoall_bytes_NK,
            load_imbalance=self.load_imbalance_N,
            breakdown_NP=self.breakdown_NP if breakdown_NP is None else breakdown_NP,
            busiest_tokens_NL=self.tokens_NLG.max(axis=-1, initial=0),
            expert_tokens_NL=self.tokens_NLG.sum(axis=-1),
            cache_hits=cache_NC[:, 0],
            cache_misses=cache_NC[:, 1],
            cache_evictions=cache_NC[:, 2],
            host_to_device_bytes=cache_NC[:, 3] * float(expert_bytes),
        )


def time_chunk(
    scenario: Scenario,
    costs: DeviceCosts,
    topology: Topology,
    plan: PlacementPlan,
    local: LocalWork,
    outcome: GatingOutcome,
    tokens_G: np.ndarray,
    *,
    units_NLTK: np.ndarray | None = None,
    counts_NLGU: np.ndarray | None = None,
    source_T: np.ndarray | None = None,
    attention_NG: np.ndarray | None = None,
    micro_batch: tuple[LocalWork, LocalWork] | None = None,
    micro_attention_NG: tuple[np.ndarray, np.ndarray] | None = None,
) -> ChunkTiming:
    """Durations of a chunk from its gating outcome and its routing in placement slots, at
    token level (``units_NLTK`` with each token's GPU ``source_T``) or count level
    (``counts_NLGU``); ``attention_NG``: each step's attention block seconds per GPU, where
    they differ from ``local``'s (a serving stretch, whose contexts grow); ``micro_batch``:
    the local work of each half of the step's tokens (``local_work.share``), to time the
    step as two overlapped micro-batches
    (``sim/overlap``; the breakdown then gives the compute stream's phases and, as
    ``alltoall``, the communication left exposed), ``micro_attention_NG`` their attention per
    step where it differs from ``micro_batch``'s."""
    model = scenario.model
    n, layers, _units = outcome.tokens_NLE.shape
    dispatch_row = model.d_model * model.part_bytes("dispatch")
    combine_row = model.d_model * model.part_bytes("combine")

    expert_NLE = local.expert_time(outcome.slots_NLE)
    padding = outcome.slots_NLE is not outcome.tokens_NLE
    slots_NLG = plan.per_gpu_sum(outcome.slots_NLE)
    expert_NLG = plan.per_gpu_sum(expert_NLE) + local.shared_G
    if local.expert_launch_s:
        expert_NLG = expert_NLG + local.expert_launch_s * (slots_NLG > 0)
    tokens_NLG = plan.per_gpu_sum(outcome.tokens_NLE) if padding else slots_NLG
    largest_NLG = plan.per_gpu_max(outcome.slots_NLE)

    if outcome.capacity_G is not None:
        egress, ingress = static_tokens(outcome.capacity_G, plan, topology)
        egress, ingress = egress[:, None], ingress[:, None]
    elif counts_NLGU is not None:
        egress, ingress = counted_tokens(counts_NLGU, plan, topology)
    else:
        egress, ingress = routed_tokens(units_NLTK, source_T, tokens_NLG, plan, topology)
    if scenario.policies.alltoall == "hierarchical" and topology.domains > 1:
        rows_NLGD = domain_rows(plan, topology, units_NLTK, source_T, counts_NLGU)
        egress, ingress = via_domains(egress, ingress, rows_NLGD, tokens_G, model.top_k, topology)

    def alltoall(egress: np.ndarray, ingress: np.ndarray, row_bytes: int) -> np.ndarray:
        seconds = alltoall_time(egress, ingress, topology, costs.launch_overhead_s, row_bytes)
        return np.broadcast_to(seconds, (n, layers))

    dispatch_NL = alltoall(egress, ingress, dispatch_row)
    # the same rows travel back over full-duplex ports, in the combine's precision
    same = combine_row == dispatch_row
    combine_NL = dispatch_NL if same else alltoall(egress, ingress, combine_row)
    # what the all-to-alls cost besides links: a lone rank's local path, the layer's glue
    dispatch_NL = dispatch_NL + local.alltoall_local_G.max(initial=0.0)
    # Bytes crossing each link kind, dispatch and combine (local traffic stays at zero).
    rows_KN = egress.sum(axis=(2, 3))
    row_bytes = dispatch_row + combine_row
    alltoall_bytes_NK = row_bytes * np.broadcast_to(rows_KN.T, (n, len(KINDS)))
    alltoall_bytes_NK = alltoall_bytes_NK * (np.arange(len(KINDS)) > 0)
    count_NL = np.zeros((n, layers))
    if outcome.count_exchange and layers:
        count_egress, count_ingress = count_exchange_bytes(plan, topology)
        count_NL = count_NL + alltoall_time(
            count_egress, count_ingress, topology, costs.launch_overhead_s
        )
        alltoall_bytes_NK = alltoall_bytes_NK + count_egress.sum(axis=(1, 2)) * (
            np.arange(len(KINDS)) > 0
        )

    # Local work per step: the chunk's attention (``attention_NG``, steps whose contexts
    # differ) or the run's; the critical GPU of each layer is the one that arrives last.
    expert_max_NL = expert_NLG.max(axis=-1) if layers else np.zeros((n, 0))
    breakdown_NP = _compute_breakdown(local, attention_NG, expert_max_NL, n)
    breakdown_NP[:, _ALLTOALL] = (count_NL + dispatch_NL + combine_NL).sum(axis=1)
    latency_N = breakdown_NP.sum(axis=1)
    timeline = None
    if micro_batch is not None:  # two micro-batches of half the rows each, overlapped
        attention_M = micro_attention_NG or (None, None)
        parts = []
        for part, work in enumerate(micro_batch):
            out, into = share(egress, 2, part), share(ingress, 2, part)
            slots_NLE = share(outcome.slots_NLE, 2, part)
            expert_NLG = plan.per_gpu_sum(local.expert_time(slots_NLE)) + work.shared_G
            busy_NLG = plan.per_gpu_sum(slots_NLE) > 0
            expert_NLG = expert_NLG + local.expert_launch_s * busy_NLG
            parts.append(
                _MicroBatch(
                    work,
                    attention_M[part],
                    count_NL
                    + alltoall(out, into, dispatch_row)
                    + work.alltoall_local_G.max(initial=0.0),
                    expert_NLG.max(axis=-1) if layers else np.zeros((n, 0)),
                    alltoall(out, into, combine_row),
                )
            )
        timeline, breakdown_NP = _two_batch(scenario, parts)
        latency_N = timeline.latency_N

    sent_NLG = egress.sum(axis=0)
    received_NLG = slots_NLG
    if layers:
        activation_NG = activation_bytes(
            scenario,
            tokens_G,
            sent_NLG,
            received_NLG,
            largest_NLG,
            outcome.capacity_G,
            outcome.einsum_dispatch,
        ).max(axis=1)
        activation_NG = np.broadcast_to(activation_NG, (n, tokens_G.size))
    else:
        activation_NG = np.zeros((n, tokens_G.size))

    return ChunkTiming(
        overlap=timeline,
        count_NL=count_NL,
        dispatch_NL=dispatch_NL,
        combine_NL=combine_NL,
        expert_NLG=expert_NLG,
        expert_NLU=expert_NLE,
        tokens_NLU=outcome.tokens_NLE,
        latency_N=latency_N,
        breakdown_NP=breakdown_NP,
        processed_N=tokens_NLG.sum(axis=(1, 2)),
        padded_N=(slots_NLG - tokens_NLG).sum(axis=(1, 2)) if padding else np.zeros(n, np.int64),
        alltoall_bytes_NK=alltoall_bytes_NK,
        tokens_NLG=tokens_NLG,
        load_imbalance_N=load_imbalance(tokens_NLG),
        activation_NG=activation_NG,
    )


@dataclass(frozen=True)
class _MicroBatch:
    """One micro-batch's local work (and attention per step, where it differs) and its
    per-layer dispatch (count exchange included), slowest experts and combine."""

    work: LocalWork
    attention_NG: np.ndarray | None
    dispatch_NL: np.ndarray
    expert_NL: np.ndarray
    combine_NL: np.ndarray


def _two_batch(scenario: Scenario, parts: list[_MicroBatch]) -> tuple[TwoBatchTimeline, np.ndarray]:
    """The two micro-batches' timeline and the step's breakdown: the compute stream's
    phases, and as ``alltoall`` the communication left exposed. Compute runs on the SMs the
    communication kernels leave (``comm_sm_fraction``; for the whole step, as in steady
    state one micro-batch is always communicating)."""
    n, layers = parts[0].dispatch_NL.shape
    slower = 1.0 / (1.0 - getattr(scenario.policies.overlap, "comm_sm_fraction", 0.0))

    def pre_NL(part: _MicroBatch) -> np.ndarray:
        pre_XL = part.work.pre_XLG(part.attention_NG).max(axis=-1, initial=0.0)
        return np.broadcast_to(pre_XL, (n, layers))

    timeline = two_batch(
        slower * np.stack([pre_NL(p) for p in parts]),
        np.stack([p.dispatch_NL for p in parts]),
        slower * np.stack([p.expert_NL for p in parts]),
        np.stack([p.combine_NL for p in parts]),
        slower * np.stack([np.full(n, p.work.tail_G.max()) for p in parts]),
    )
    breakdown_NP = sum(_compute_breakdown(p.work, p.attention_NG, p.expert_NL, n) for p in parts)
    breakdown_NP[:, _COMPUTE] *= slower
    exposed = timeline.latency_N - breakdown_NP.sum(axis=1)
    breakdown_NP[:, _ALLTOALL] = np.maximum(exposed, 0.0)
    return timeline, breakdown_NP


def _compute_breakdown(
    local: LocalWork, attention_NG: np.ndarray | None, expert_max_NL: np.ndarray, n: int
) -> np.ndarray:
    """Each step's critical-path seconds per phase outside the all-to-alls (whose column
    stays zero): per MoE layer the GPU that arrives last at the dispatch, after the last one
    the GPU that finishes last."""
    attention_XG = local.attention_G[None] if attention_NG is None else attention_NG
    pre_attention_XLG = local.blocks_L[None, :, None] * attention_XG[:, None, :]
    pre_XLG = local.pre_XLG(attention_NG)
    critical_XL1 = pre_XLG.argmax(axis=-1)[..., None]
    tail_XG = local.tail_blocks * attention_XG + local.tail_dense * local.dense_G
    tail_XG = tail_XG + local.lm_head_G + local.tail_allreduce_G
    tail_X1 = tail_XG.argmax(axis=-1)[:, None]

    def critical(values_XLG: np.ndarray) -> np.ndarray:
        """The critical GPUs' ``values`` summed over layers, per step."""
        values_XLG = np.broadcast_to(values_XLG, pre_XLG.shape)
        return np.take_along_axis(values_XLG, critical_XL1, axis=-1).sum(axis=(1, 2))

    def at_tail(values_XG: np.ndarray) -> np.ndarray:
        return np.take_along_axis(np.broadcast_to(values_XG, tail_XG.shape), tail_X1, axis=-1)[:, 0]

    breakdown_NP = np.zeros((n, len(PHASES)))
    column = {name: i for i, name in enumerate(PHASES)}
    breakdown_NP[:, column["attention"]] = critical(
        pre_attention_XLG
    ) + local.tail_blocks * at_tail(attention_XG)
    breakdown_NP[:, column["dense_ffn"]] = critical(
        local.pre_dense_LG[None]
    ) + local.tail_dense * at_tail(local.dense_G[None])
    breakdown_NP[:, column["gate"]] = critical(local.gate_G[None, None])
    breakdown_NP[:, column["expert"]] = expert_max_NL.sum(axis=1)
    breakdown_NP[:, column["other"]] = at_tail(local.lm_head_G[None])
    breakdown_NP[:, column["allreduce"]] = critical(local.pre_allreduce_LG[None]) + at_tail(
        local.tail_allreduce_G[None]
    )
    return breakdown_NP
