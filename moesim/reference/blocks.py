"""The dense parts of a decoder block in torch, with real weights of the scenario's shapes:
attention (norm, fused QKV projection, scaled-dot-product attention over the KV cache, output
projection, residual) and FFNs (MLP with GELU, or GLU with SiLU). Weights are random, drawn
from a generator seeded by the scenario: the executor measures time, not language."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moesim.config import ModelSpec

__all__ = ["TORCH_DTYPES", "AttentionBlock", "FfnWeights", "ffn", "random_weight"]

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def random_weight(
    shape: tuple[int, ...], fan_in: int, gen: torch.Generator, dtype: torch.dtype, device
) -> torch.Tensor:
    """Normal weights scaled by ``1/sqrt(fan_in)``, so activations stay of order one."""
    return (torch.randn(shape, generator=gen) / math.sqrt(fan_in)).to(device=device, dtype=dtype)


@dataclass
class FfnWeights:
    """``w_in`` [D, F], ``w_gate`` [D, F] (GLU only), ``w_out`` [F, D]; leading dims allowed
    (a stack of experts)."""

    w_in: torch.Tensor
    w_out: torch.Tensor
    w_gate: torch.Tensor | None = None

    @classmethod
    def random(cls, model: ModelSpec, d_ffn: int, lead: tuple[int, ...], gen, dtype, device):
        d = model.d_model
        gate = model.ffn_type == "glu"
        return cls(
            random_weight((*lead, d, d_ffn), d, gen, dtype, device),
            random_weight((*lead, d_ffn, d), d_ffn, gen, dtype, device),
            random_weight((*lead, d, d_ffn), d, gen, dtype, device) if gate else None,
        )

    def select(self, index: int) -> FfnWeights:
        gate = self.w_gate[index] if self.w_gate is not None else None
        return FfnWeights(self.w_in[index], self.w_out[index], gate)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w_in, self.w_out, self.w_gate) if t is not None]


def ffn(x: torch.Tensor, w: FfnWeights) -> torch.Tensor:
    """The FFN over rows ``x``: ``gelu(x W_in) W_out`` or ``(silu(x W_gate) * x W_in) W_out``."""
    if w.w_gate is None:
        return F.gelu(x @ w.w_in) @ w.w_out
    return (F.silu(x @ w.w_gate) * (x @ w.w_in)) @ w.w_out


class AttentionBlock:
    """Pre-norm self-attention of one block over ``S`` local tokens; in decode each token is
    one sequence attending over ``seq_len`` positions, its own the last."""

    def __init__(self, model: ModelSpec, gen: torch.Generator, dtype: torch.dtype, device):
        d = model.d_model
        self.heads = model.heads
        self.kv_heads = model.kv_heads or model.heads
        self.head_dim = model.head_dim or d // model.heads
        self.q_dim = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        self.norm_weight = torch.ones(d, dtype=dtype, device=device)
        self.norm_bias = torch.zeros(d, dtype=dtype, device=device)
        self.qkv = random_weight((d, self.q_dim + 2 * kv), d, gen, dtype, device)
        self.out = random_weight((self.q_dim, d), self.q_dim, gen, dtype, device)

    def kv_cache(self, sequences: int, seq_len: int, gen, dtype, device) -> torch.Tensor:
        """Decode: ``[S, 2, kv_heads, seq_len, head_dim]``, the cached K/V, whose last position
        the new token writes (it attends over ``seq_len`` positions, as the simulator counts)."""
        shape = (sequences, 2, self.kv_heads, seq_len, self.head_dim)
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

    def prompt_cache(self, tokens: int, dtype, device) -> torch.Tensor:
        """Prefill: ``[tokens, 2 x kv_heads x head_dim]``, where the prompt's K/V is kept."""
        return torch.empty((tokens, 2 * self.kv_heads * self.head_dim), dtype=dtype, device=device)

    def __call__(self, x: torch.Tensor, cache: torch.Tensor, seq_len: int):
        tokens, d = x.shape
        h = F.layer_norm(x, (d,), self.norm_weight, self.norm_bias)
        qkv = h @ self.qkv
        q, kv = qkv[:, : self.q_dim], qkv[:, self.q_dim :]
        gqa = self.kv_heads != self.heads
        if cache.dim() == 5:  # decode: one new position per sequence
            cache[:, :, :, -1] = kv.view(tokens, 2, self.kv_heads, self.head_dim)
            q = q.view(tokens, self.heads, 1, self.head_dim)
            core = F.scaled_dot_product_attention(q, cache[:, 0], cache[:, 1], enable_gqa=gqa)
        else:  # prefill: whole causal sequences; their K/V stays for the decode to come
            cache.copy_(kv)
            batch = tokens // seq_len
            q = q.view(batch, seq_len, self.heads, self.head_dim).transpose(1, 2)
            kv = kv.view(batch, seq_len, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            core = F.scaled_dot_product_attention(q, kv[0], kv[1], is_causal=True, enable_gqa=gqa)
        return x + core.transpose(1, 2).reshape(tokens, self.q_dim) @ self.out
