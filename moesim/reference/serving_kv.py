"""Serving attention on one rank: the requests' real KV cache and their new tokens' attention
over it.

The cache of every attention block is one tensor ``[slots, 2, kv_heads, positions,
head_dim]``: a running request holds a slot from its first prefill to its finish (or
preemption), ``slots`` being the most sequences the scheduler runs at once and
``positions`` the longest request's prompt and output. A step's new tokens (prompt chunks and
decodes, request by request) go through one QKV projection and one scatter of their K/V after
each request's context; all decodes attend in one batched kernel over their slots (masked
past each one's context, as a paged decode kernel reads only what each holds), each prompt
chunk over its request's context and causally within itself.
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
    """The KV cache of one rank: a slot per running request in every attention block."""

    def __init__(
        self, blocks: list[AttentionBlock], slots: int, positions: int, dtype: torch.dtype, device
    ) -> None:
        self.caches = [
            torch.zeros((slots, 2, b.kv_heads, positions, b.head_dim), dtype=dtype, device=device)
            for b in blocks
        ]
        self.free_slots = list(range(slots))[::-1]
        self.slot_of: dict[int, int] = {}

    @property
    def bytes(self) -> float:
        return float(sum(c.numel() * c.element_size() for c in self.caches))

    def slots(self, requests: np.ndarray) -> np.ndarray:
        """Each request's slot, taking a free one for a request that holds none."""
        for request in requests.tolist():
            if request not in self.slot_of:
                self.slot_of[request] = self.free_slots.pop()
        return np.array([self.slot_of[r] for r in requests.tolist()], dtype=np.int64)

    def free(self, requests: np.ndarray) -> None:
        for request in requests.tolist():
            slot = self.slot_of.pop(request, None)
            if slot is not None:
                self.free_slots.append(slot)


@dataclass(frozen=True)
class StepIndex:
    """Where a step's rows go in the cache, as tensors: each row's slot and position; the
    decodes' rows, slots and positions read; each prompt chunk's (first row, tokens, slot,
    context)."""

    row_slot: torch.Tensor
    row_position: torch.Tensor
    decode_rows: torch.Tensor
    decode_slots: torch.Tensor
    decode_mask: torch.Tensor  # [D, 1, 1, P]: 0 where a decode attends, -inf past its context
    chunks: list[tuple[int, int, int, int]]

    @staticmethod
    def of(segments: Segments, slot_R: np.ndarray, dtype: torch.dtype, device) -> StepIndex:
        new, context = segments.new_tokens, segments.context
        first_R = (np.cumsum(new) - new).astype(np.int64)
        row_slot = np.repeat(slot_R, new)
        row_position = np.repeat(context - first_R, new) + np.arange(int(new.sum()))
        decode = new == 1
        read = int(context[decode].max(initial=-1)) + 1
        past = np.arange(read)[None] > context[decode][:, None]
        mask = torch.zeros(past.shape, dtype=dtype).masked_fill_(torch.as_tensor(past), -np.inf)

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, device=device)

        return StepIndex(
            row_slot=tensor(row_slot),
            row_position=tensor(row_position),
            decode_rows=tensor(first_R[decode]),
            decode_slots=tensor(slot_R[decode]),
            decode_mask=mask[:, None, None, :].to(device),
            chunks=[
                (int(f), int(n), int(s), int(c))
                for f, n, s, c in zip(first_R, new, slot_R, context, strict=True)
                if n > 1
            ],
        )


def serving_attention(
    block: AttentionBlock, x: torch.Tensor, index: StepIndex, cache: torch.Tensor
) -> torch.Tensor:
    """Pre-norm self-attention of a step's rows ``x`` over this block's ``cache``, which their
    K/V extend (``index``: where each row goes); with residual."""
    tokens, d = x.shape
    h = F.layer_norm(x, (d,), block.norm_weight, block.norm_bias)
    qkv = h @ block.qkv
    q = qkv[:, : block.q_dim].view(tokens, block.heads, block.head_dim)
    kv = qkv[:, block.q_dim :].view(tokens, 2, block.kv_heads, block.head_dim)
    cache[index.row_slot, :, :, index.row_position] = kv
    gqa = block.kv_heads != block.heads
    core = torch.empty_like(q)
    if index.decode_rows.numel():
        read = index.decode_mask.shape[-1]
        held = cache[:, :, :, :read].index_select(0, index.decode_slots)  # [D, 2, H, read, d]
        core[index.decode_rows] = F.scaled_dot_product_attention(
            q[index.decode_rows].unsqueeze(2),
            held[:, 0],
            held[:, 1],
            attn_mask=index.decode_mask,  # additive: faster than a boolean one on CPU
            enable_gqa=gqa,
        ).squeeze(2)
    for first, n, slot, context in index.chunks:
        q_i = q[first : first + n].transpose(0, 1)
        keys, values = cache[slot, 0, :, : context + n], cache[slot, 1, :, : context + n]
        if context == 0:  # a whole prompt, or its first chunk
            out = F.scaled_dot_product_attention(q_i, keys, values, is_causal=True, enable_gqa=gqa)
        else:  # a later chunk: every position before it, then causal within it
            seen = torch.arange(context + n, device=x.device)[None] <= (
                context + torch.arange(n, device=x.device)[:, None]
            )
            out = F.scaled_dot_product_attention(q_i, keys, values, attn_mask=seen, enable_gqa=gqa)
        core[first : first + n] = out.transpose(0, 1)
    return x + core.reshape(tokens, block.q_dim) @ block.out
