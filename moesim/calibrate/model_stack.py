"""One model card's layers as the reference executor builds them on one rank, for timing.

Real torch objects of ``moesim.reference`` with the card's shapes and random weights: its
attention blocks, MoE layers (router, every expert resident, shared experts; a world of one
rank), FFNs, LM head, and host copies of experts with a device slot to copy them into. As many
copies of a layer as the card has blocks (at most ``MAX_COPIES``), so that timing cycles through
weights and caches the way a step does rather than reading one layer's from cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from moesim.config import ModelSpec
from moesim.errors import MoesimError
from moesim.reference.blocks import TORCH_DTYPES, AttentionBlock, FfnWeights, random_weight
from moesim.reference.experts import ExpertStore
from moesim.reference.moe import LayerRoute, MoeLayer

__all__ = ["MAX_COPIES", "ModelStack", "build_stack", "route", "step_bytes"]

MAX_COPIES = 8
_MEMORY_SHARE = 4  # the stack may take at most a quarter of the device's memory


@dataclass
class ModelStack:
    """``copies`` of each layer kind of one card on one rank."""

    model: ModelSpec
    device: torch.device
    dtype: torch.dtype
    blocks: list[AttentionBlock]
    moe: list[MoeLayer]
    ffn: list[FfnWeights]
    dense: list[FfnWeights] | None
    lm_head: torch.Tensor
    host: FfnWeights  # every copy's experts, stacked, in host memory (pinned on a GPU)
    slot: FfnWeights  # one expert's device slot
    scratch: torch.Tensor  # bytes streamed through between passes (``step_bytes``)

    def evict(self) -> None:
        """Leave the caches as a step of the executor finds a layer: after the rest of the
        step's weights streamed through (as many bytes read and written), so that a small
        card stays in a large cache and a large one does not."""
        self.scratch.add_(1)

    @property
    def copies(self) -> int:
        return len(self.blocks)

    def gated(self, capacity: int | None, einsum: bool) -> list[MoeLayer]:
        """The MoE layers under dynamic gating (``capacity`` None) or static gating with
        ``capacity`` slots per expert (einsum or index dispatch)."""
        capacity_G = None if capacity is None else np.array([capacity])
        return [dataclasses.replace(m, capacity_G=capacity_G, einsum=einsum) for m in self.moe]


def step_bytes(model: ModelSpec) -> int:
    """Bytes of weights one rank reads in a step of the card: every block's attention and
    experts (shared ones included) or dense FFN, and the LM head."""
    moe = model.moe_layers("decoder")
    blocks = model.stacks()["decoder"]
    expert = model.expert_params
    per_moe = model.num_experts * expert + model.shared_experts * expert
    params = blocks * model.attention_params_per_block + moe * per_moe
    params += (blocks - moe) * model.dense_ffn_params + model.vocab_size * model.d_model
    return int(params * model.dtype_bytes)


def _stack_bytes(model: ModelSpec, copies: int) -> float:
    """Bytes of the stack: per copy its attention, experts (resident and on the host), shared
    expert and FFN; one LM head."""
    per_copy = model.attention_params_per_block + model.expert_params * (
        2 * model.num_experts + model.shared_experts + 1
    )
    return float((copies * per_copy + model.vocab_size * model.d_model) * model.dtype_bytes)


def _unbuildable(model: ModelSpec) -> str | None:
    """Why the reference executor would not build this card's layers, if it would not."""
    if not model.num_experts:
        return "it has no experts"
    if model.dtype not in TORCH_DTYPES:
        return f"dtype {model.dtype} (the executor runs {', '.join(TORCH_DTYPES)})"
    if model.architecture != "decoder" or model.mla is not None:
        return "the executor builds decoders with standard multi-head attention"
    if model.attention_params is not None or model.kv_dim is not None:
        return "attention_params and kv_dim overrides are not built by the executor"
    parts = ("attention", "kv_cache", "dispatch", "combine")
    if any(model.part_dtype(part) != model.dtype for part in parts):
        return "the executor runs one dtype, not per-part precisions"
    return None


def build_stack(
    model: ModelSpec, device: torch.device, memory_bytes: float, scratch_bytes: int | None = None
) -> ModelStack:
    """The card's layers on ``device``, and ``scratch_bytes`` (default ``step_bytes``) to
    stream through between timed passes; a card too large for a quarter of ``memory_bytes``
    is refused with a MoesimError (calibration is for cards of a size one device runs)."""
    reason = _unbuildable(model)
    if reason is not None:
        raise MoesimError(f"model {model.name!r}: cannot calibrate its operators: {reason}")
    copies = min(model.layers, MAX_COPIES)
    need = _stack_bytes(model, copies)
    if need > memory_bytes / _MEMORY_SHARE:
        raise MoesimError(
            f"model {model.name!r}: its layers take {need / 2**30:.1f} GiB, more than a quarter "
            "of this device's memory; calibrate a smaller card"
        )
    dtype = TORCH_DTYPES[model.dtype]
    gen = torch.Generator().manual_seed(0)
    experts, d = model.num_experts, model.d_model

    def ffn(d_ffn: int) -> list[FfnWeights]:
        return [FfnWeights.random(model, d_ffn, (), gen, dtype, device) for _ in range(copies)]

    moe = [
        MoeLayer(
            gate=random_weight((d, experts), d, gen, dtype, device),
            owner_U=np.zeros(experts, dtype=np.int64),
            store=ExpertStore(
                np.arange(experts),
                resident=FfnWeights.random(model, model.d_ffn, (experts,), gen, dtype, device),
            ),
            capacity_G=None,
            einsum=False,
            shared=ffn(model.d_ffn)[: model.shared_experts],
        )
        for _ in range(copies)
    ]
    host = FfnWeights.random(model, model.d_ffn, (copies * experts,), gen, dtype, "cpu")
    if device.type == "cuda":
        gate = host.w_gate.pin_memory() if host.w_gate is not None else None
        host = FfnWeights(host.w_in.pin_memory(), host.w_out.pin_memory(), gate)
    slot = FfnWeights.random(model, model.d_ffn, (1,), gen, dtype, device).select(0)
    dense = model.dense_d_ffn
    return ModelStack(
        model=model,
        device=device,
        dtype=dtype,
        blocks=[AttentionBlock(model, gen, dtype, device) for _ in range(copies)],
        moe=moe,
        ffn=ffn(model.d_ffn),
        dense=ffn(dense) if dense is not None and dense != model.d_ffn else None,
        lm_head=random_weight((d, model.vocab_size), d, gen, dtype, device),
        host=host,
        slot=slot,
        scratch=torch.zeros(
            step_bytes(model) if scratch_bytes is None else scratch_bytes,
            dtype=torch.uint8,
            device=device,
        ),
    )


def route(
    tokens: int, model: ModelSpec, gen: torch.Generator, device: torch.device, capacity: int | None
) -> LayerRoute:
    """Uniform routing of ``tokens`` tokens to ``top_k`` distinct experts each; under static
    gating the assignments that keep one of ``capacity`` slots, first by choice then by token
    (the static policy's order)."""
    experts, top_k = model.num_experts, model.top_k
    units = torch.rand((tokens, experts), generator=gen).argsort(dim=1)[:, :top_k]
    kept = None
    if capacity is not None:
        flat = units.t().reshape(-1)  # choice-major
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=experts)
        starts = torch.cumsum(counts, 0) - counts
        position = torch.empty_like(flat)
        position[order] = torch.arange(flat.numel()) - starts[flat[order]]
        kept = (position < capacity).view(top_k, tokens).t().contiguous().to(device)
    units = units.to(device)
    return LayerRoute(units=units, logical=units, kept=kept)
