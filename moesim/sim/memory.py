"""Bytes on each GPU: weights, KV cache and the transient activations of a step.

Weights: every GPU holds the non-expert parameters (data-parallel attention and dense FFNs,
embeddings, routers, shared experts) and its local experts of every MoE layer. KV cache: in
decode, each local sequence's K/V over ``seq_len`` positions in every attention block (self and,
for an encoder-decoder, cross); in prefill, the prompt's own K/V (the encoder's output for an
encoder's prefill). Activations of an MoE layer: hidden and residual streams, router scores,
the dense ``S x E x C`` combine weights (fp32) and dispatch mask (bool) of einsum gating, the
send and receive buffers, and the largest local expert's FFN intermediate and output.
"""

from __future__ import annotations

import numpy as np

from moesim.config import Scenario
from moesim.policies import PlacementPlan, buffered_stacks
from moesim.sim.layer_costs import GATE_SCORE_BYTES, MASK_BYTES
from moesim.sim.layout import Layout

__all__ = [
    "activation_bytes",
    "dense_activation_bytes",
    "expert_weights_bytes",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "non_expert_bytes",
    "serving_kv_blocks",
    "weights_bytes",
]


def expert_weights_bytes(scenario: Scenario, plan: PlacementPlan) -> np.ndarray:
    """``experts_G``: bytes of resident expert weights (and replicas) per GPU. MoE layers
    outside the plan's stack are placed contiguously; buffered layers hold at most
    ``slots_per_layer`` experts (the expert in flight on its way in counts as activation)."""
    model = scenario.model
    gpus = plan.gpus
    contiguous_G = np.bincount(
        np.arange(model.num_experts) * gpus // max(model.num_experts, 1), minlength=gpus
    )
    buffered = buffered_stacks(scenario)
    slots = scenario.policies.cache.slots_per_layer if buffered else 0
    experts_G = np.zeros(gpus)
    for stack in model.stacks():
        layers = model.moe_layers(stack)
        per_layer_LG = (
            plan.experts_per_gpu_LG
            if stack == scenario.stack()
            else np.broadcast_to(contiguous_G, (layers, gpus))
        )
        if stack in buffered:
            per_layer_LG = np.minimum(per_layer_LG, slots)
        experts_G += per_layer_LG.sum(axis=0)
    return experts_G * model.expert_params * float(model.dtype_bytes)


def non_expert_bytes(scenario: Scenario) -> float:
    """The non-expert parameters one GPU holds: embeddings, attention and dense FFNs split
    over its attention group, shared experts over its expert rank, routers whole."""
    model, parallel = scenario.model, scenario.cluster.parallel
    a, x = parallel.attention_tp, parallel.expert_tp
    parts = model.non_expert_parts()
    split = {"embedding": a, "dense": a, "router": 1, "shared": x}
    rest = sum(parts[name] / split[name] for name in split)
    blocks = parts["attention"] / model.attention_params_per_block
    attention = blocks * model.attention_params_per_gpu(a)
    return (attention + rest) * float(model.dtype_bytes)


def weights_bytes(scenario: Scenario, plan: PlacementPlan) -> np.ndarray:
    """``weights_G``: the non-expert parameters on every GPU plus its resident experts (its
    slice of its expert rank's experts, under expert tensor parallelism)."""
    layout = Layout.of(scenario)
    experts_G = layout.to_gpus(expert_weights_bytes(layout.view(scenario), plan))
    return non_expert_bytes(scenario) + experts_G


def kv_cache_bytes(scenario: Scenario, tokens_G: np.ndarray) -> np.ndarray:
    """``kv_G`` for the phase (see the module docstring): under tensor parallelism each GPU
    holds its attention group's sequences, split by KV head (MLA's latent replicates)."""
    model, workload = scenario.model, scenario.workload
    layout = Layout.of(scenario)
    tokens_G = layout.group_sum(tokens_G) / min(layout.attention_tp, model.kv_splits)
    if workload.mtp is not None:  # a sequence's drafted positions share its cache
        tokens_G = tokens_G / (1 + workload.mtp.tokens)
    if workload.phase == "prefill" and scenario.stack() == "encoder":
        return (tokens_G * model.d_model * model.dtype_bytes).astype(np.float64)
    ab = model.part_bytes("kv_cache")
    if workload.phase == "prefill":
        return (tokens_G * model.kv_width * ab * model.layers).astype(np.float64)
    blocks = model.layers if model.architecture == "decoder" else 2 * (model.decoder_layers or 0)
    return (tokens_G * workload.seq_len * model.kv_width * ab * blocks).astype(np.float64)


def activation_bytes(
    scenario: Scenario,
    tokens_G: np.ndarray,
    sent_XG: np.ndarray,
    received_XG: np.ndarray,
    largest_expert_XG: np.ndarray,
    capacity_G: np.ndarray | None,
    einsum: bool,
) -> np.ndarray:
    """Transient bytes of an MoE layer on each GPU, for any leading shape ``X``."""
    model = scenario.model
    ab, d = model.dtype_bytes, model.d_model
    hidden = (model.ffn_matrices - 1) * model.d_ffn
    streams = 2 * tokens_G * d * ab
    scores = tokens_G * model.num_experts * GATE_SCORE_BYTES
    masks = tokens_G * model.num_experts * capacity_G * MASK_BYTES if einsum else 0
    buffers = (sent_XG + 2 * received_XG) * d * ab + largest_expert_XG * hidden * ab
    return (streams + scores + masks + buffers).astype(np.float64)


def dense_activation_bytes(
    scenario: Scenario, tokens_G: np.ndarray, logits_G: np.ndarray
) -> np.ndarray:
    """Transient bytes of an attention block, a dense FFN or the LM head's logits for
    ``logits_G`` positions (whichever is largest) per GPU."""
    model = scenario.model
    ab = model.dtype_bytes
    streams = 2 * tokens_G * model.d_model * ab
    attention = tokens_G * (model.q_dim + model.kv_width) * ab
    ffn = tokens_G * (model.ffn_matrices - 1) * (model.dense_d_ffn or model.d_ffn) * ab
    logits = logits_G * model.vocab_size * ab
    return (streams + np.maximum(np.maximum(attention, ffn), logits)).astype(np.float64)


def kv_bytes_per_token(scenario: Scenario) -> float:
    """KV-cache bytes one token of context holds on each GPU of its attention group: K and V
    in every attention block, split by KV head over the group (MLA's latent: replicated)."""
    model = scenario.model
    split = min(scenario.cluster.parallel.attention_tp, model.kv_splits)
    return float(model.kv_width * model.part_bytes("kv_cache") * model.layers) / split


def serving_kv_blocks(
    scenario: Scenario,
    weights_G: np.ndarray,
    step_tokens: int,
    block_tokens: int,
    memory_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks_G, activation_G)``: the KV blocks of ``block_tokens`` tokens each GPU can
    hold in serving, and the activation peak they leave room for: ``memory_fraction`` of the
    device, less the weights and the peak of the largest step (``step_tokens`` on the GPU,
    receiving as many expert rows as it sends)."""
    model = scenario.model
    tokens_G = np.full(weights_G.shape, step_tokens)
    rows_G = tokens_G * model.top_k
    activation_G = np.maximum(
        dense_activation_bytes(scenario, tokens_G, tokens_G),
        activation_bytes(scenario, tokens_G, rows_G, rows_G, tokens_G, None, False),
    )
    free_G = scenario.cluster.device.memory.capacity * memory_fraction - weights_G - activation_G
    per_block = kv_bytes_per_token(scenario) * block_tokens
    return np.maximum(np.floor(free_G / per_block), 0).astype(np.int64), activation_G
