"""The parallel layout of a step: tensor-parallel attention groups and expert ranks.

``attention_tp`` consecutive GPUs form an attention group: each runs the group's tokens
through its ``1/attention_tp`` of the heads (and of the dense FFNs and the LM head), and the
group all-reduces each block's output. ``expert_tp`` consecutive GPUs form an expert rank:
each holds ``1/expert_tp`` of every expert's FFN of the rank. The rank is the unit that
placement, gating and the all-to-alls see (``view``): after an all-gather inside the rank, each
of its GPUs holds the rank's tokens and sends them, through its own port, to the matching GPU
of each destination rank; experts compute their slice; combine returns the partial sums, which
a reduce-scatter inside the rank adds up. So the MoE layer of ``gpus`` GPUs with expert TP is
the MoE layer of ``gpus / expert_tp`` ranks with FFNs ``1/expert_tp`` as wide, plus one
all-reduce of the rank's rows over its GPUs. ``1, 1`` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.config import LinkSpec, Scenario
from moesim.hardware import allreduce_time
from moesim.metrics import StepRecords

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    gpus: int
    attention_tp: int
    expert_tp: int
    domain: int

    @classmethod
    def of(cls, scenario: Scenario) -> Layout:
        cluster = scenario.cluster
        parallel = cluster.parallel
        return cls(cluster.gpus, parallel.attention_tp, parallel.expert_tp, cluster.domain)

    @property
    def ranks(self) -> int:
        """Expert ranks: the devices that placement, gating and the all-to-alls see."""
        return self.gpus // self.expert_tp

    def view(self, scenario: Scenario) -> Scenario:
        """The scenario as its expert ranks see it: one device per rank, in NVLink domains
        of ``domain / expert_tp`` ranks, experts ``1/expert_tp`` as wide."""
        x = self.expert_tp
        if x == 1:
            return scenario
        cluster, model = scenario.cluster, scenario.model
        domain = max(cluster.domain // x, 1)
        ranks = cluster.model_copy(
            update={
                "nodes": self.ranks // domain,
                "gpus_per_node": domain,
                "nvlink_domain": None,
                # one device per rank: its attention groups are the GPUs' business
                "parallel": cluster.parallel.model_copy(update={"attention_tp": 1, "expert_tp": 1}),
            }
        )
        return scenario.model_copy(
            update={"cluster": ranks, "model": model.model_copy(update={"d_ffn": model.d_ffn // x})}
        )

    def group_sum(self, values_G: np.ndarray) -> np.ndarray:
        """Per GPU, the sum over its attention group (what the group's GPUs each run)."""
        a = self.attention_tp
        if a == 1:
            return values_G
        return np.repeat(np.reshape(values_G, (-1, a)).sum(axis=1), a)

    def rank_sum(self, values_G: np.ndarray) -> np.ndarray:
        """Per expert rank, the sum over its GPUs (last axis)."""
        x = self.expert_tp
        return values_G if x == 1 else values_G.reshape(*values_G.shape[:-1], -1, x).sum(-1)

    def rank_max(self, values_G: np.ndarray) -> np.ndarray:
        """Per expert rank, the slowest of its GPUs (last axis): the rank waits for it."""
        x = self.expert_tp
        return values_G if x == 1 else values_G.reshape(*values_G.shape[:-1], -1, x).max(-1)

    def to_gpus(self, values_V: np.ndarray) -> np.ndarray:
        """Per GPU, its rank's value (last axis)."""
        return values_V if self.expert_tp == 1 else np.repeat(values_V, self.expert_tp, axis=-1)

    def share_gpus(self, values_V: np.ndarray) -> np.ndarray:
        """Per GPU, its share of its rank's expert work (last axis): each of the rank's GPUs
        computes a ``1/expert_tp`` slice of every row."""
        return self.to_gpus(values_V) / self.expert_tp if self.expert_tp > 1 else values_V

    def gpu_steps(self, steps: StepRecords) -> StepRecords:
        """Step rows of the expert ranks as the GPUs see them: every GPU of a rank sends the
        rank's rows through its own port (``expert_tp`` times the bytes), and the busiest
        GPU's expert tokens are its share of the busiest rank's."""
        x = self.expert_tp
        if x == 1:
            return steps
        return replace(
            steps,
            alltoall_bytes_NK=steps.alltoall_bytes_NK * x,
            busiest_tokens_NL=steps.busiest_tokens_NL / x,
        )

    def link(self, scenario: Scenario, tp: int) -> LinkSpec | None:
        """The link a group of ``tp`` consecutive GPUs all-reduces over: NVLink inside a
        domain, the network across domains."""
        links = scenario.cluster.device.links
        return links.nvlink if tp <= self.domain else links.network

    def allreduce_s(self, scenario: Scenario, rows: np.ndarray, tp: int) -> np.ndarray:
        """Seconds of one all-reduce of ``rows`` hidden rows (in the attention precision)
        among ``tp`` GPUs: through the NVLink switches inside a domain, a ring across."""
        link = self.link(scenario, tp)
        model = scenario.model
        if tp == 1 or link is None:
            return np.zeros(np.shape(rows))
        bytes_moved = rows * model.d_model * model.part_bytes("attention")
        return allreduce_time(link, bytes_moved, tp, switched=tp <= self.domain)
