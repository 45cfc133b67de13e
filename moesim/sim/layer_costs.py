"""Per-device durations of the local (non-collective) work of one layer, from token counts.

Everything is a roofline op of ``DeviceCosts``; arrays broadcast over GPUs ``G`` (and steps,
layers, experts where given). Launch counts are the kernels an eager PyTorch layer issues.

- attention block: QKV/output projections (``2 * tokens * params`` FLOPs) plus the core
  (``4 * tokens * context * q_dim`` FLOPs), reading the block's weights, the tokens' activations
  and, in decode, each sequence's cached K/V over ``context`` tokens;
- FFN (dense or one expert): ``2 * tokens * params`` FLOPs, its weights read once if it runs;
- gate: router GEMM, softmax/top-k and the dispatch/combine reorder, either dense ``S x E x C``
  einsums (GShard/fairseq, ``4 * S * E * C * D`` FLOPs) or index gathers (``S * K`` rows);
- LM head: ``2 * tokens * vocab * d_model`` FLOPs over the vocabulary matrix.

With a calibrated GEMM table (``DeviceCosts.gemm``), each matmul takes its measured time and the
kernels around it (norms, softmax, activations, attention core, masks) stay roofline ops.
"""

from __future__ import annotations

import numpy as np

from moesim.config import ModelSpec
from moesim.hardware import DeviceCosts

__all__ = [
    "ATTENTION_LAUNCHES",
    "GATE_LAUNCHES",
    "GATE_SCORE_BYTES",
    "MASK_BYTES",
    "attention_time",
    "ffn_time",
    "gate_time",
    "lm_head_time",
]

ATTENTION_LAUNCHES = 5  # norm, QKV projection, attention kernel, output projection, residual
GATE_LAUNCHES = 8  # router GEMM, softmax, top-k, masks or sort, dispatch and combine reorders
GATE_SCORE_BYTES = 4  # routers compute softmax in fp32 (fairseq, Megatron)
MASK_BYTES = GATE_SCORE_BYTES + 1  # einsum gating: fp32 combine weight + bool dispatch mask


def attention_time(
    model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray, context: float, decode: bool
) -> np.ndarray:
    """One attention block for ``tokens`` tokens that each attend over ``context`` positions."""
    if costs.gemm is not None:
        return _measured_attention(model, costs, tokens, context, decode)
    wb = ab = model.dtype_bytes
    params = model.attention_params_per_block
    flops = 2.0 * tokens * params + 4.0 * tokens * context * model.q_dim
    act = tokens * (2 * model.d_model + model.q_dim + model.kv_width) * ab
    kv = tokens * context * model.kv_width * ab if decode else tokens * model.kv_width * ab
    busy = np.asarray(tokens) > 0
    return np.where(busy, costs.op_time(flops, params * wb + act + kv, ATTENTION_LAUNCHES), 0.0)


def ffn_time(model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray, d_ffn: int) -> np.ndarray:
    """One FFN of width ``d_ffn`` over ``tokens`` rows; zero when it has no rows."""
    if costs.gemm is not None:
        return _measured_ffn(model, costs, tokens, d_ffn)
    ab = model.dtype_bytes
    params = model.ffn_matrices * model.d_model * d_ffn
    hidden = (model.ffn_matrices - 1) * d_ffn
    bytes_moved = params * model.dtype_bytes + tokens * (2 * model.d_model + hidden) * ab
    launches = model.ffn_matrices + 1
    busy = np.asarray(tokens) > 0
    return np.where(busy, costs.op_time(2.0 * tokens * params, bytes_moved, launches), 0.0)


def gate_time(
    model: ModelSpec,
    costs: DeviceCosts,
    tokens: np.ndarray,
    capacity: np.ndarray | None,
    einsum: bool,
) -> np.ndarray:
    """Router, top-k and reorder for ``tokens`` local tokens; ``capacity`` slots per expert."""
    if costs.gemm is not None:
        return _measured_gate(model, costs, tokens, capacity, einsum)
    d, e, k, ab = model.d_model, model.num_experts, model.top_k, model.dtype_bytes
    flops = 2.0 * tokens * d * e
    bytes_moved = d * e * ab + tokens * d * ab + 3 * tokens * e * GATE_SCORE_BYTES
    if einsum and capacity is not None:
        mask = tokens * e * capacity
        flops = flops + 2 * 2.0 * mask * d
        bytes_moved = bytes_moved + mask * MASK_BYTES + 2 * 2 * e * capacity * d * ab
    else:
        rows = tokens * k
        bytes_moved = bytes_moved + 2 * 2 * rows * d * ab + rows * 16
    busy = np.asarray(tokens) > 0
    return np.where(busy, costs.op_time(flops, bytes_moved, GATE_LAUNCHES), 0.0)


def lm_head_time(model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray) -> np.ndarray:
    """Logits for ``tokens`` positions over the vocabulary."""
    if costs.gemm is not None:
        return costs.matmul_time(tokens, model.d_model, model.vocab_size)
    ab = model.dtype_bytes
    params = model.vocab_size * model.d_model
    bytes_moved = params * ab + tokens * (model.d_model + model.vocab_size) * ab
    busy = np.asarray(tokens) > 0
    return np.where(busy, costs.op_time(2.0 * tokens * params, bytes_moved, 2), 0.0)


def _measured_attention(
    model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray, context: float, decode: bool
) -> np.ndarray:
    """Measured projections; norm, residual, the K/V write and the attention core as ops."""
    ab, d, q, kv = model.dtype_bytes, model.d_model, model.q_dim, model.kv_width
    projections = costs.matmul_time(tokens, d, q + kv) + costs.matmul_time(tokens, q, d)
    read = tokens * context * kv * ab if decode else tokens * kv * ab
    core = costs.op_time(4.0 * tokens * context * q, read + 2.0 * tokens * q * ab, 1 + decode)
    glue = costs.op_time(0.0, 5.0 * tokens * d * ab, 2)
    return np.where(np.asarray(tokens) > 0, projections + core + glue, 0.0)


def _measured_ffn(
    model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray, d_ffn: int
) -> np.ndarray:
    """Measured up/gate and down projections; the activation (and GLU product) as ops."""
    up = model.ffn_matrices - 1
    matmuls = up * costs.matmul_time(tokens, model.d_model, d_ffn)
    matmuls = matmuls + costs.matmul_time(tokens, d_ffn, model.d_model)
    moved = (2.0 + 3.0 * (up - 1)) * tokens * d_ffn * model.dtype_bytes
    return np.where(np.asarray(tokens) > 0, matmuls + costs.op_time(0.0, moved, up), 0.0)


def _measured_gate(
    model: ModelSpec,
    costs: DeviceCosts,
    tokens: np.ndarray,
    capacity: np.ndarray | None,
    einsum: bool,
) -> np.ndarray:
    """Measured router GEMM (and einsum dispatch/combine GEMMs); scores and reorders as ops."""
    d, e, k, ab = model.d_model, model.num_experts, model.top_k, model.dtype_bytes
    router = costs.matmul_time(tokens, d, e)
    scores = costs.op_time(0.0, 3.0 * tokens * e * GATE_SCORE_BYTES, 2)
    if einsum and capacity is not None:
        slots, rows = np.broadcast_arrays(e * np.asarray(capacity), np.asarray(tokens))
        # dispatch: (slots x tokens) @ (tokens x d); combine: (tokens x slots) @ (slots x d)
        einsums = [
            costs.matmul_time(c, int(t), d) + costs.matmul_time(t, int(c), d)
            for c, t in zip(slots.ravel(), rows.ravel(), strict=True)
        ]
        reorder = np.reshape(einsums, slots.shape)
        reorder = reorder + costs.op_time(0.0, rows * slots * MASK_BYTES, GATE_LAUNCHES - 5)
    else:
        rows = tokens * k
        reorder = costs.op_time(0.0, 2 * 2 * rows * d * ab + rows * 16, GATE_LAUNCHES - 3)
    return np.where(np.asarray(tokens) > 0, router + scores + reorder, 0.0)
