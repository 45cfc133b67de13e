"""Per-device durations of the local (non-collective) work of one layer, from token counts.

Everything is a roofline op of ``DeviceCosts``; arrays broadcast over GPUs ``G`` (and steps,
layers, experts where given). Launch counts are the kernels an eager PyTorch layer issues.

- attention block: QKV/output projections (``2 * tokens * params`` FLOPs, in ``dtype``) plus
  the core (``2 * tokens * context * (q_dim + v_dim)`` FLOPs, in ``attention_dtype``), reading
  the block's weights, the tokens' activations and, in decode, each sequence's cached K/V over
  ``context`` tokens (in ``kv_cache_dtype``). MLA decodes absorbed (DeepSeek-V2 section
  2.1.2): each head scores against the cached latent and rotary key (``kv_width`` values) and
  sums values in the latent (``kv_lora_rank``), so the core is ``2 * tokens * context * heads *
  (kv_width + kv_lora_rank)`` FLOPs and reads one latent per position for all heads. Under
  tensor parallelism (``tp`` GPUs) each GPU holds ``1/tp`` of the heads and their weights
  and ``1/min(tp, kv_splits)`` of the cache (MLA's latent is shared by the heads: it
  replicates);
- FFN (dense or one expert): ``2 * tokens * params`` FLOPs, its weights read once if it runs;
- gate: router GEMM, softmax/top-k and the dispatch/combine reorder, either dense ``S x E x C``
  einsums (GShard/fairseq, ``4 * S * E * C * D`` FLOPs) or index gathers (``S * K`` rows);
- LM head: ``2 * tokens * vocab * d_model`` FLOPs over the vocabulary matrix.

With a calibrated GEMM table (``DeviceCosts.gemm``), each matmul takes its measured time and the
kernels around it (norms, softmax, activations, attention core, masks) stay roofline ops.
With tables measured for the scenario's model card (``DeviceCosts.tables_for``), each whole
operator takes its measured time instead, interpolated over tokens and context
(``hardware.model_tables``), where the table's conditions hold (one GPU per attention block,
the card's experts as placement slots).
"""

from __future__ import annotations

import numpy as np

from moesim.config import ModelSpec
from moesim.config.model_tables import TokensCurve
from moesim.hardware import DeviceCosts
from moesim.hardware.model_tables import curve, grid

__all__ = [
    "ATTENTION_LAUNCHES",
    "DYNAMIC_GLUE_OPS",
    "GATE_LAUNCHES",
    "GATE_SCORE_BYTES",
    "MASK_BYTES",
    "STATIC_GLUE_OPS",
    "attention_time",
    "core_width",
    "ffn_time",
    "gate_time",
    "lm_head_time",
    "local_alltoall_time",
]

ATTENTION_LAUNCHES = 5  # norm, QKV projection, attention kernel, output projection, residual
GATE_LAUNCHES = 8  # router GEMM, softmax, top-k, masks or sort, dispatch and combine reorders
GATE_SCORE_BYTES = 4  # routers compute softmax in fp32 (fairseq, Megatron)
MASK_BYTES = GATE_SCORE_BYTES + 1  # einsum gating: fp32 combine weight + bool dispatch mask
# Eager ops around the router and the all-to-alls of a PyTorch MoE layer, as the reference
# executor issues them (softmax, top-k, sorts, counts, gathers, scatters, regrouping, residual):
DYNAMIC_GLUE_OPS = 30
STATIC_GLUE_OPS = 36
DYNAMIC_ALLTOALLS = 3  # count exchange, dispatch, combine
STATIC_ALLTOALLS = 2  # dispatch, combine


def attention_time(
    model: ModelSpec,
    costs: DeviceCosts,
    tokens: np.ndarray,
    context: float,
    decode: bool,
    tp: int = 1,
    queries: int = 1,
) -> np.ndarray:
    """One attention block for ``tokens`` tokens that each attend over ``context`` positions,
    on one of ``tp`` GPUs that split its heads; in decode, ``queries`` tokens of a sequence
    (its next one and drafted ones) read its cache together, once."""
    tables = costs.tables_for(model)
    if tables is not None and tp == 1 and queries == 1:
        if decode:
            table = tables.attention_decode
            seconds = grid(table.tokens, table.context, table.seconds, tokens, context)
        else:  # whole prompts of seq_len attend over (seq_len + 1) / 2 positions on average
            table = tables.attention_prefill
            seq_len = np.maximum(2.0 * np.asarray(context) - 1.0, 1.0)
            seconds = grid(table.sequences, table.seq_len, table.seconds, tokens / seq_len, seq_len)
        return np.where(np.asarray(tokens) > 0, seconds, 0.0)
    if costs.gemm is not None:
        return _measured_attention(model, costs, tokens, context, decode, tp, queries)
    wb, ab = model.dtype_bytes, model.part_bytes("attention")
    kv_split = min(tp, model.kv_splits)
    params = model.attention_params_per_gpu(tp)
    core = 2.0 * tokens * context * core_width(model, decode) / tp
    flops = 2.0 * tokens * params + costs.flops_as(core, model.part_dtype("attention"))
    act = tokens * (2 * model.d_model + model.q_dim / tp + model.kv_width / kv_split) * ab
    kv_row = model.kv_width * model.part_bytes("kv_cache") / kv_split
    kv = tokens / queries * context * kv_row if decode else tokens * kv_row
    busy = np.asarray(tokens) > 0
    return np.where(busy, costs.op_time(flops, params * wb + act + kv, ATTENTION_LAUNCHES), 0.0)


def core_width(model: ModelSpec, decode: bool) -> int:
    """FLOPs per token and context position of the attention core, halved: score and value
    widths over all heads (MLA's absorbed decode works in the latent)."""
    if model.mla is not None and decode:
        return model.heads * (model.kv_width + model.mla.kv_lora_rank)
    return model.q_dim + model.v_dim


def ffn_time(model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray, d_ffn: int) -> np.ndarray:
    """One FFN of width ``d_ffn`` over ``tokens`` rows; zero when it has no rows."""
    table = _ffn_table(model, costs, d_ffn)
    if table is not None:
        return np.where(np.asarray(tokens) > 0, curve(table.tokens, table.seconds, tokens), 0.0)
    if costs.gemm is not None:
        return _measured_ffn(model, costs, tokens, d_ffn)
    ab = model.dtype_bytes
    params = model.ffn_matrices * model.d_model * d_ffn
    hidden = (model.ffn_matrices - 1) * d_ffn
    bytes_moved = params * model.dtype_bytes + tokens * (2 * model.d_model + hidden) * ab
    launches = model.ffn_matrices + 1
    busy = np.asarray(tokens) > 0
    return np.where(busy, costs.op_time(2.0 * tokens * params, bytes_moved, launches), 0.0)


def _ffn_table(model: ModelSpec, costs: DeviceCosts, d_ffn: int) -> TokensCurve | None:
    """The measured FFN of width ``d_ffn`` of the model's card (its experts' width, or its dense
    layers'), if calibrated."""
    tables = costs.tables_for(model)
    if tables is None:
        return None
    if d_ffn == model.d_ffn:
        return tables.ffn
    return tables.dense_ffn if d_ffn == model.dense_d_ffn else None


def gate_time(
    model: ModelSpec,
    costs: DeviceCosts,
    tokens: np.ndarray,
    capacity: np.ndarray | None,
    einsum: bool,
    units: int | None = None,
) -> np.ndarray:
    """Router, top-k and reorder for ``tokens`` local tokens; ``capacity`` slots per expert
    and placement slot (``units``: experts and their replicas, default the experts); with
    the card's tables, the gate phase measured."""
    tables = costs.tables_for(model)
    if tables is not None and units in (None, model.num_experts):
        if capacity is None:
            table = tables.gate_dynamic
            seconds = curve(table.tokens, table.seconds, tokens)
        else:
            table = tables.gate_einsum if einsum else tables.gate_static
            assignments = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0) * model.top_k
            factor = np.asarray(capacity) * model.num_experts / assignments
            seconds = grid(table.tokens, table.capacity_factor, table.seconds, tokens, factor)
        return np.where(np.asarray(tokens) > 0, seconds, 0.0)
    if costs.gemm is not None:
        return _measured_gate(model, costs, tokens, capacity, einsum, units)
    d, k, ab = model.d_model, model.top_k, model.dtype_bytes
    e = units or model.num_experts
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


def lm_head_time(
    model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray, tp: int = 1
) -> np.ndarray:
    """Logits for ``tokens`` positions over the vocabulary (``1/tp`` of it per GPU)."""
    vocab = model.vocab_size // tp
    tables = costs.tables_for(model)
    if tables is not None and tp == 1:
        seconds = curve(tables.lm_head.tokens, tables.lm_head.seconds, tokens)
        return np.where(np.asarray(tokens) > 0, seconds, 0.0)
    if costs.gemm is not None:
        return costs.matmul_time(tokens, model.d_model, vocab)
    ab = model.dtype_bytes
    params = vocab * model.d_model
    bytes_moved = params * ab + tokens * (model.d_model + vocab) * ab
    busy = np.asarray(tokens) > 0
    return np.where(busy, costs.op_time(2.0 * tokens * params, bytes_moved, 2), 0.0)


def local_alltoall_time(
    model: ModelSpec, costs: DeviceCosts, tokens: np.ndarray, static: bool, lone: bool
) -> np.ndarray:
    """What one MoE layer's all-to-all phase holds on an expert rank besides the transfers
    over links. A ``lone`` rank's rows all stay local, yet its all-to-alls still run: their
    measured local path with the card's tables, else one launch each. With the card's tables
    also the layer's untimed glue, which the executor books as all-to-all time (everything of
    a step outside its timed phases). Zero without tokens."""
    tables = costs.tables_for(model)
    seconds = np.zeros(np.shape(tokens))
    if tables is not None:
        seconds = seconds + curve(tables.glue.tokens, tables.glue.seconds, tokens)
        table = tables.alltoall_static if static else tables.alltoall_dynamic
        if lone:
            seconds = seconds + curve(table.tokens, table.seconds, tokens)
    elif lone:
        calls = STATIC_ALLTOALLS if static else DYNAMIC_ALLTOALLS
        seconds = seconds + calls * costs.launch_overhead_s
    return np.where(np.asarray(tokens) > 0, seconds, 0.0)


def _measured_attention(
    model: ModelSpec,
    costs: DeviceCosts,
    tokens: np.ndarray,
    context: float,
    decode: bool,
    tp: int,
    queries: int,
) -> np.ndarray:
    """Measured projections; norm, residual, the K/V write and the attention core as ops."""
    ab, d = model.dtype_bytes, model.d_model
    q, kv = model.q_dim // tp, model.kv_width // min(tp, model.kv_splits)
    projections = costs.matmul_time(tokens, d, q + kv) + costs.matmul_time(tokens, q, d)
    kv_bytes = model.part_bytes("kv_cache")
    read = tokens / queries * context * kv * kv_bytes if decode else tokens * kv * kv_bytes
    core = 2.0 * tokens * context * core_width(model, decode) / tp
    flops = costs.flops_as(core, model.part_dtype("attention"))
    core = costs.attention_core_time(flops, read, read + 2.0 * tokens * q * ab, decode)
    # norm, the K/V write (decode), heads back to rows, residual
    glue = costs.op_time(0.0, 5.0 * tokens * d * ab + decode * tokens * kv * ab, 3 + decode)
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
    units: int | None,
) -> np.ndarray:
    """Measured router GEMM (and einsum dispatch/combine GEMMs); the rest as the eager glue
    ops of an index-based dispatcher (sorting by expert, gathers and scatters of the rows on
    both sides of each all-to-all, the weighted combine and the residual)."""
    d, e, k, ab = model.d_model, model.num_experts, model.top_k, model.dtype_bytes
    router = costs.matmul_time(tokens, d, e)
    e = units or e  # dispatch buffers and masks span the placement's slots
    row = d * ab
    residual = 3.0 * tokens * row
    if capacity is None:  # dynamic: gathers, regrouping and the scatter-add of rows
        rows = tokens * k
        moved = 13.0 * rows * row + 2.0 * tokens * row + residual + 16.0 * rows * 8
        glue = costs.op_time(0.0, moved + 3 * tokens * e * GATE_SCORE_BYTES, DYNAMIC_GLUE_OPS)
        return np.where(np.asarray(tokens) > 0, router + glue, 0.0)
    slots = e * np.asarray(capacity)
    moved = 8.0 * slots * row + residual + 3 * tokens * e * GATE_SCORE_BYTES
    if einsum:  # dense S x E x C masks, dispatch and combine as GEMMs
        slots_b, rows_b = np.broadcast_arrays(slots, np.asarray(tokens))
        einsums = [
            costs.matmul_time(c, int(t), d) + costs.matmul_time(t, int(c), d)
            for c, t in zip(slots_b.ravel(), rows_b.ravel(), strict=True)
        ]
        moved = moved + 2.0 * tokens * slots * MASK_BYTES
        glue = np.reshape(einsums, slots_b.shape) + costs.op_time(0.0, moved, STATIC_GLUE_OPS)
    else:
        moved = moved + 4.0 * tokens * k * row
        glue = costs.op_time(0.0, moved, STATIC_GLUE_OPS + 4)
    return np.where(np.asarray(tokens) > 0, router + glue, 0.0)
