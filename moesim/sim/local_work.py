"""The layer layout of a phase and each device's local work between two collectives.

Local work (attention, dense FFNs, routers, the LM head, tensor-parallel all-reduces) depends
only on each GPU's token count, so it is computed once per run as vectors over devices ``G``;
MoE layers ``L`` are the points where devices synchronise in all-to-alls. The devices are the
expert ranks of the layout (``sim/layout``: the GPUs themselves unless ``expert_tp > 1``); each
rank's local work is its slowest GPU's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.config import Scenario
from moesim.hardware import DeviceCosts
from moesim.hardware.model_tables import curve
from moesim.sim.layer_costs import (
    attention_time,
    ffn_time,
    gate_time,
    lm_head_time,
    local_alltoall_time,
)
from moesim.sim.layout import Layout

__all__ = [
    "LocalWork",
    "expert_table",
    "lm_head_tokens",
    "local_work",
    "share",
    "work_around",
]


@dataclass(frozen=True)
class LocalWork:
    """Seconds per device. ``blocks_L``/``dense_L``: attention blocks and dense FFNs that run
    before MoE layer ``l`` since the previous one; ``tail_*``: after the last MoE layer.
    ``allreduce_G``: the tensor-parallel all-reduce after each attention block and dense
    FFN; ``moe_allreduce_G``: the expert rank's all-gather and reduce-scatter per MoE layer;
    ``expert_launch_s``: a grouped expert kernel's launches, once per device that has rows;
    ``alltoall_local_G``: per MoE layer, what the all-to-all phase holds besides the transfers
    over links (``layer_costs.local_alltoall_time``: a lone rank's local path, the glue)."""

    attention_G: np.ndarray
    dense_G: np.ndarray
    shared_G: np.ndarray
    gate_G: np.ndarray
    lm_head_G: np.ndarray
    blocks_L: np.ndarray
    dense_L: np.ndarray
    tail_blocks: int
    tail_dense: int
    expert_by_rows: np.ndarray
    allreduce_G: np.ndarray
    moe_allreduce_G: np.ndarray
    expert_launch_s: float
    alltoall_local_G: np.ndarray

    def expert_time(self, rows: np.ndarray) -> np.ndarray:
        """Seconds of one expert's FFN over ``rows`` rows (a table lookup, any shape)."""
        return self.expert_by_rows[rows]

    @property
    def pre_attention_LG(self) -> np.ndarray:
        return self.blocks_L[:, None] * self.attention_G[None]

    @property
    def pre_dense_LG(self) -> np.ndarray:
        return self.dense_L[:, None] * self.dense_G[None]

    @property
    def pre_allreduce_LG(self) -> np.ndarray:
        blocks_L = self.blocks_L + self.dense_L
        return blocks_L[:, None] * self.allreduce_G[None] + self.moe_allreduce_G[None]

    @property
    def pre_LG(self) -> np.ndarray:
        """Work before each MoE layer's dispatch: attention, dense FFNs, their all-reduces,
        router."""
        return self.pre_attention_LG + self.pre_dense_LG + self.gate_G[None] + self.pre_allreduce_LG

    def pre_XLG(self, attention_XG: np.ndarray | None = None) -> np.ndarray:
        """``pre_LG`` for each step ``X`` whose attention blocks take ``attention_XG``
        (default: this work's, one row)."""
        attention_XG = self.attention_G[None] if attention_XG is None else attention_XG
        pre_attention_XLG = self.blocks_L[None, :, None] * attention_XG[:, None, :]
        rest_LG = self.pre_dense_LG + self.gate_G[None] + self.pre_allreduce_LG
        return pre_attention_XLG + rest_LG[None]

    @property
    def tail_allreduce_G(self) -> np.ndarray:
        return (self.tail_blocks + self.tail_dense) * self.allreduce_G

    @property
    def tail_G(self) -> np.ndarray:
        return (
            self.tail_blocks * self.attention_G
            + self.tail_dense * self.dense_G
            + self.lm_head_G
            + self.tail_allreduce_G
        )


def _layout(scenario: Scenario) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense layers before each MoE layer of the stack, and after the last one."""
    model = scenario.model
    dense_before: list[int] = []
    run = 0
    for index in range(model.stacks()[scenario.stack()]):
        if model.is_moe_layer(index):
            dense_before.append(run)
            run = 0
        else:
            run += 1
    return np.array(dense_before, dtype=np.int64), np.ones(len(dense_before), np.int64), run


def lm_head_tokens(scenario: Scenario, tokens_G: np.ndarray, source_T: np.ndarray) -> np.ndarray:
    """Positions that need logits: every token in decode, each prompt's last one in prefill
    (every one with ``workload.logits: all``), none in an encoder."""
    workload = scenario.workload
    if scenario.stack() == "encoder":
        return np.zeros_like(tokens_G)
    if workload.phase == "decode" or workload.logits == "all":
        return tokens_G
    last_T = np.arange(1, workload.batch_size + 1) * workload.seq_len - 1
    return np.bincount(source_T[last_T], minlength=tokens_G.size)


def share(values: np.ndarray, parts: int, part: int) -> np.ndarray:
    """Micro-batch ``part`` of ``parts``'s share of whole counts: the first ones get the
    remainder (5 in 2: 3 and 2)."""
    return (np.asarray(values) + parts - 1 - part) // parts


def local_work(
    scenario: Scenario,
    costs: DeviceCosts,
    tokens_G: np.ndarray,
    source_T: np.ndarray,
    capacity_G: np.ndarray | None,
    einsum: bool,
    units: int | None = None,
    parts: int = 1,
    part: int = 0,
) -> LocalWork:
    """Each device's local work in a fixed-batch step from each GPU's tokens ``tokens_G``
    (``source_T``: each token's GPU); ``capacity_G``: static slots per expert rank;
    ``units``: the placement's expert slots (replicas included); ``parts``: the step runs as
    that many micro-batches, of which this is number ``part`` (``share``)."""
    model, workload = scenario.model, scenario.workload
    lm_tokens_G = share(lm_head_tokens(scenario, tokens_G, source_T), parts, part)
    tokens_G = share(tokens_G, parts, part)
    if capacity_G is not None:
        capacity_G = share(capacity_G, parts, part)
    layout = Layout.of(scenario)
    decode = workload.phase == "decode"
    encoder = scenario.stack() == "encoder"
    context = workload.seq_len if (decode or encoder) else (workload.seq_len + 1) / 2
    group_G, tp = layout.group_sum(tokens_G), layout.attention_tp
    queries = 1 + (workload.mtp.tokens if workload.mtp is not None else 0)
    attention_G = attention_time(model, costs, group_G, context, decode, tp, queries)
    if model.architecture == "encoder-decoder" and not encoder:
        attention_G = attention_G + attention_time(
            model, costs, group_G, workload.seq_len, True, tp
        )
    return work_around(
        scenario, costs, tokens_G, attention_G, lm_tokens_G, capacity_G, einsum, units
    )


def expert_table(
    scenario: Scenario, costs: DeviceCosts, tokens_G: np.ndarray, capacity_G: np.ndarray | None
) -> np.ndarray:
    """One expert's seconds for 0, 1, ... rows, as many as a step can give it: an expert (or
    replica) gets each token at most once; static slots can exceed that."""
    max_rows = max(int(tokens_G.sum()), int(capacity_G.sum()) if capacity_G is not None else 0)
    if scenario.policies.expert_kernel == "grouped":  # launched once per GPU: expert_launch_s
        costs = replace(costs, launch_overhead_s=0.0)
    tables = costs.tables_for(scenario.model)
    if tables is not None and scenario.policies.expert_kernel != "grouped":
        rows = np.arange(max_rows + 1)
        return np.where(rows > 0, curve(tables.expert.rows, tables.expert.seconds, rows), 0.0)
    return ffn_time(scenario.model, costs, np.arange(max_rows + 1), scenario.model.d_ffn)


def work_around(
    scenario: Scenario,
    costs: DeviceCosts,
    tokens_G: np.ndarray,
    attention_G: np.ndarray,
    lm_tokens_G: np.ndarray,
    capacity_G: np.ndarray | None,
    einsum: bool,
    units: int | None = None,
    expert_by_rows: np.ndarray | None = None,
) -> LocalWork:
    """Each device's local work around given attention blocks (``attention_G`` seconds on
    each GPU) and each GPU's LM-head positions: what a fixed batch and a serving step share.
    Dense FFNs, the LM head and the all-reduces run on the attention group's tokens; router,
    shared experts and experts on the expert rank's (``layout.view``). ``expert_by_rows``:
    one expert's seconds by rows, when the caller keeps a table long enough for every step."""
    model = scenario.model
    layout = Layout.of(scenario)
    tp, ranks = layout.attention_tp, layout.view(scenario)
    group_G = layout.group_sum(tokens_G)
    dense_G = ffn_time(model, costs, group_G, (model.dense_d_ffn or model.d_ffn) // tp)
    lm_G = lm_head_time(model, costs, layout.group_sum(lm_tokens_G), tp)
    rank_V = layout.rank_sum(tokens_G)
    shared_V = model.shared_experts * ffn_time(ranks.model, costs, rank_V, ranks.model.d_ffn)
    gate_V = (
        gate_time(model, costs, rank_V, capacity_G, einsum, units)
        if model.moe_every
        else np.zeros(rank_V.shape)
    )
    alltoall_local_V = (
        local_alltoall_time(model, costs, rank_V, capacity_G is not None, rank_V.size == 1)
        if model.moe_every
        else np.zeros(rank_V.shape)
    )
    dense_L, ones_L, tail_dense = _layout(scenario)
    if expert_by_rows is None:
        expert_by_rows = expert_table(ranks, costs, rank_V, capacity_G)
    return LocalWork(
        attention_G=layout.rank_max(attention_G),
        dense_G=layout.rank_max(dense_G),
        shared_G=shared_V,
        gate_G=gate_V,
        lm_head_G=layout.rank_max(lm_G),
        blocks_L=dense_L + ones_L,
        dense_L=dense_L,
        tail_blocks=tail_dense,
        tail_dense=tail_dense,
        expert_by_rows=expert_by_rows,
        allreduce_G=layout.rank_max(layout.allreduce_s(scenario, group_G, tp)),
        moe_allreduce_G=layout.allreduce_s(scenario, rank_V, layout.expert_tp),
        expert_launch_s=(
            (model.ffn_matrices + 1) * costs.launch_overhead_s
            if scenario.policies.expert_kernel == "grouped"
            else 0.0
        ),
        alltoall_local_G=alltoall_local_V,
    )
