"""ParallelSpec: how a cluster's GPUs split the model (``cluster.parallel``).

Attention, dense FFNs and the LM head are tensor-parallel within groups of ``attention_tp``
consecutive GPUs and data-parallel across the ``gpus / attention_tp`` groups; routed experts are
expert-parallel over ``gpus / expert_tp`` expert ranks, each of ``expert_tp`` consecutive GPUs
that split every expert's FFN. ``1, 1`` is data-parallel attention with wide expert parallelism.
"""

from __future__ import annotations

from pydantic import Field

from moesim.config.fields import Frozen

__all__ = ["ParallelSpec"]


class ParallelSpec(Frozen):
    attention_tp: int = Field(
        default=1, ge=1, description="GPUs per tensor-parallel attention group"
    )
    expert_tp: int = Field(default=1, ge=1, description="GPUs that split each expert's FFN")
