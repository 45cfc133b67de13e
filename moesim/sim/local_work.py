"""The layer layout of a phase and each GPU's local work between two collectives.

Local work (attention, dense FFNs, routers, the LM head) depends only on each GPU's token
count, so it is computed once per run as vectors over GPUs ``G``; MoE layers ``L`` are the
points where GPUs synchronise in all-to-alls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import Scenario
from moesim.hardware import DeviceCosts
from moesim.sim.layer_costs import attention_time, ffn_time, gate_time, lm_head_time

__all__ = ["LocalWork", "expert_table", "lm_head_tokens", "local_work", "work_around"]


@dataclass(frozen=True)
class LocalWork:
    """Seconds per GPU. ``blocks_L``/``dense_L``: attention blocks and dense FFNs that run
    before MoE layer ``l`` since the previous one; ``tail_*``: after the last MoE layer."""

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
    def pre_LG(self) -> np.ndarray:
        """Work before each MoE layer's first collective: attention, dense FFNs, router."""
        return self.pre_attention_LG + self.pre_dense_LG + self.gate_G[None]

    @property
    def tail_G(self) -> np.ndarray:
        return self.tail_blocks * self.attention_G + self.tail_dense * self.dense_G + self.lm_head_G


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


def local_work(
    scenario: Scenario,
    costs: DeviceCosts,
    tokens_G: np.ndarray,
    source_T: np.ndarray,
    capacity_G: np.ndarray | None,
    einsum: bool,
    units: int | None = None,
) -> LocalWork:
    """Each GPU's local work in a fixed-batch step; ``units``: the placement's expert slots
    (replicas included)."""
    model, workload = scenario.model, scenario.workload
    decode = workload.phase == "decode"
    encoder = scenario.stack() == "encoder"
    context = workload.seq_len if (decode or encoder) else (workload.seq_len + 1) / 2
    attention_G = attention_time(model, costs, tokens_G, context, decode)
    if model.architecture == "encoder-decoder" and not encoder:
        attention_G = attention_G + attention_time(model, costs, tokens_G, workload.seq_len, True)
    lm_tokens_G = lm_head_tokens(scenario, tokens_G, source_T)
    return work_around(
        scenario, costs, tokens_G, attention_G, lm_tokens_G, capacity_G, einsum, units
    )


def expert_table(
    scenario: Scenario, costs: DeviceCosts, tokens_G: np.ndarray, capacity_G: np.ndarray | None
) -> np.ndarray:
    """One expert's seconds for 0, 1, ... rows, as many as a step can give it: an expert (or
    replica) gets each token at most once; static slots can exceed that."""
    max_rows = max(int(tokens_G.sum()), int(capacity_G.sum()) if capacity_G is not None else 0)
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
    """Each GPU's local work around given attention blocks (``attention_G`` seconds each) and
    LM-head positions: what a fixed batch and a serving step share. ``expert_by_rows``: one
    expert's seconds by rows, when the caller keeps a table long enough for every step."""
    model = scenario.model
    dense_G = ffn_time(model, costs, tokens_G, model.dense_d_ffn or model.d_ffn)
    shared_G = model.shared_experts * ffn_time(model, costs, tokens_G, model.d_ffn)
    gate_G = (
        gate_time(model, costs, tokens_G, capacity_G, einsum, units)
        if model.moe_every
        else np.zeros_like(dense_G)
    )
    dense_L, ones_L, tail_dense = _layout(scenario)
    lm_G = lm_head_time(model, costs, lm_tokens_G)
    if expert_by_rows is None:
        expert_by_rows = expert_table(scenario, costs, tokens_G, capacity_G)
    return LocalWork(
        attention_G=attention_G,
        dense_G=dense_G,
        shared_G=shared_G,
        gate_G=gate_G,
        lm_head_G=lm_G,
        blocks_L=dense_L + ones_L,
        dense_L=dense_L,
        tail_blocks=tail_dense,
        tail_dense=tail_dense,
        expert_by_rows=expert_by_rows,
    )
