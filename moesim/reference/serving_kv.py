"""Serving attention on one rank: each request's real KV cache and its new tokens' attention
over it.

A request's K/V in every attention block is a tensor ``[2, kv_heads, capacity, head_dim]``,
allocated when it first prefills and sized for the most context it can hold (``prompt +
output - 1`` tokens), freed when it finishes or is preempted. A step's new tokens (prompt
chunks and decodes, request by request) go through one QKV projection; each request writes
its new K/V after its context and attends over both (causally within a chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from moesim.reference.blocks import AttentionBlock

__all__ = ["KVStore", "Segments", "serving_attention"]


@dataclass(frozen=True)
class Segments:
    """A step's rows on one rank, request by request: ``request`` ids, their ``new_tokens``
    and ``context`` (tokens already in their KV), all of shape (R,)."""

    request: np.ndarray
    new_tokens: np.ndarray
    context: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.new_tokens.sum())


class KVStore:
    """The KV caches of one rank's requests, per attention block; counts the bytes held."""

    def __init__(self, blocks: list[AttentionBlock], dtype: torch.dtype, device) -> None:
        self.blocks, self.dtype, self.device = blocks, dtype, device
        self.caches: dict[int, list[torch.Tensor]] = {}
        self.bytes = 0
        self.peak_bytes = 0

    def hold(self, request: int, capacity: int) -> list[torch.Tensor]:
        """The request's caches, allocated for ``capacity`` tokens if it holds none."""
        caches = self.caches.get(request)
        if caches is None:
            caches = [
                torch.empty(
                    (2, b.kv_heads, capacity, b.head_dim), dtype=self.dtype, device=self.device
                )
                for b in self.blocks
            ]
            self.caches[request] = caches
            self.bytes += sum(c.numel() * c.element_size() for c in caches)
            self.peak_bytes = max(self.peak_bytes, self.bytes)
        return caches

    def free(self, requests: np.ndarray) -> None:
        for request in requests.tolist():
            caches = self.caches.pop(request, None)
            if caches is not None:
                self.bytes -= sum(c.numel() * c.element_size() for c in caches)


def serving_attention(
    block: AttentionBlock, x: torch.Tensor, segments: Segments, caches: list[torch.Tensor]
) -> torch.Tensor:
    """Pre-norm self-attention of ``x`` (the segments' rows, in order), each request's new
    tokens over its cache ``caches[i]`` (this block's), which they extend; with residual."""
    d = x.shape[1]
    h = F.layer_norm(x, (d,), block.norm_weight, block.norm_bias)
    qkv = h @ block.qkv
    q, kv = qkv[:, : block.q_dim], qkv[:, block.q_dim :]
    gqa = block.kv_heads != block.heads
    cores = []
    first = 0
    for cache, n, c in zip(
        caches, segments.new_tokens.tolist(), segments.context.tolist(), strict=True
    ):
        rows = slice(first, first + n)
        first += n
        cache[:, :, c : c + n] = (
            kv[rows].view(n, 2, block.kv_heads, block.head_dim).permute(1, 2, 0, 3)
        )
        q_i = q[rows].view(n, block.heads, block.head_dim).transpose(0, 1)
        keys, values = cache[0, :, : c + n], cache[1, :, : c + n]
        if n == 1:  # a decode: the one new token sees the whole context
            core = F.scaled_dot_product_attention(q_i, keys, values, enable_gqa=gqa)
        elif c == 0:  # a whole prompt, or its first chunk
            core = F.scaled_dot_product_attention(q_i, keys, values, is_causal=True, enable_gqa=gqa)
        else:  # a later chunk: every context position, then causal within the chunk
            seen = (
                torch.arange(c + n, device=x.device)[None]
                <= c + torch.arange(n, device=x.device)[:, None]
            )
            core = F.scaled_dot_product_attention(q_i, keys, values, attn_mask=seen, enable_gqa=gqa)
        cores.append(core.transpose(0, 1).reshape(n, block.q_dim))
    return x + torch.cat(cores) @ block.out
