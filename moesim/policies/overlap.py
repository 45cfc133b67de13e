"""Overlap policies: how a step splits into micro-batches whose communication hides behind
each other's compute.

- ``none``: the step is one batch; each MoE layer's all-to-alls wait for its compute.
- ``two_batch``: each GPU's tokens split into two micro-batches (DeepSeek's dual micro-batch,
  SGLang's two-batch overlap); while one dispatches or combines, the other computes, on
  separate compute and communication streams (``sim/overlap`` times it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from moesim.config import OVERLAP, Policy, PolicyParams

__all__ = ["NoOverlap", "Overlap", "TwoBatch"]


class Overlap(Policy):
    """Base of the overlap policies: ``micro_batches`` per step."""

    micro_batches = 1


@OVERLAP.register("none")
class NoOverlap(Overlap):
    class Params(PolicyParams):
        name: Literal["none"] = "none"


@OVERLAP.register("two_batch")
class TwoBatch(Overlap):
    """``comm_sm_fraction``: the share of the GPU's SMs the communication kernels hold while
    they run beside compute, which slows the compute by as much (DeepEP's normal kernels,
    prefill-style, take 20 of an H800's 132 SMs; its low-latency decode kernels none)."""

    micro_batches = 2

    class Params(PolicyParams):
        name: Literal["two_batch"] = "two_batch"
        comm_sm_fraction: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)
