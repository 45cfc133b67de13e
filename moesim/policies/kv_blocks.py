"""Paged KV cache accounting for one data-parallel attention group (vLLM's block manager).

``total_blocks`` blocks of ``block_tokens`` tokens; a request holding ``n`` tokens of context
holds ``ceil(n / block_tokens)`` blocks. Arrays are indexed by request id (``R``); only block
counts are kept, never tokens. Asking for more blocks than are free is a bug of the caller
(the scheduler checks ``needed`` first), raised as ``KVOverflow``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["KVBlocks", "KVOverflow"]


class KVOverflow(RuntimeError):
    """An allocation beyond the free blocks: the scheduler planned more than fits."""


class KVBlocks:
    """Blocks held per request id; ``free_blocks + used_blocks == total_blocks`` always."""

    def __init__(self, total_blocks: int, block_tokens: int = 16) -> None:
        if total_blocks < 0 or block_tokens < 1:
            raise ValueError(f"KV cache of {total_blocks} blocks of {block_tokens} tokens")
        self.total_blocks = int(total_blocks)
        self.block_tokens = int(block_tokens)
        self.used_blocks = 0
        self._held_R = np.zeros(0, dtype=np.int64)

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks

    def blocks_for(self, tokens: ArrayLike) -> np.ndarray | int:
        """Blocks that ``tokens`` of context occupy (an int for an int, else an array)."""
        blocks = -(-np.asarray(tokens, dtype=np.int64) // self.block_tokens)
        return int(blocks) if blocks.ndim == 0 else blocks

    def held(self, requests: ArrayLike) -> np.ndarray:
        """Blocks each of ``requests`` holds (0 for one never seen)."""
        ids = np.asarray(requests, dtype=np.int64)
        held = np.zeros(ids.shape, dtype=np.int64)
        inside = ids < self._held_R.size
        held[inside] = self._held_R[ids[inside]]
        return held

    def needed(self, requests: ArrayLike, tokens: ArrayLike) -> np.ndarray:
        """Blocks each request must add to hold ``tokens`` of context (0 if it holds enough)."""
        return np.maximum(self.blocks_for(np.asarray(tokens)) - self.held(requests), 0)

    def grow(self, requests: ArrayLike, tokens: ArrayLike) -> None:
        """Let each request hold ``tokens`` of context (allocates its first blocks too); a
        request never shrinks. Distinct ids; raises ``KVOverflow`` beyond the free blocks."""
        ids = np.atleast_1d(np.asarray(requests, dtype=np.int64))
        if ids.size and ids.max() >= self._held_R.size:
            grown = np.zeros(max(int(ids.max()) + 1, 2 * self._held_R.size), dtype=np.int64)
            grown[: self._held_R.size] = self._held_R
            self._held_R = grown
        held = self._held_R[ids]
        extra = np.maximum(self.blocks_for(np.asarray(tokens)) - held, 0)
        if extra.shape != ids.shape:
            extra = np.broadcast_to(extra, ids.shape)
        total = int(extra.sum())
        if total > self.free_blocks:
            raise KVOverflow(f"{total} KV blocks asked for, {self.free_blocks} free")
        if total:
            self._held_R[ids] = held + extra
            self.used_blocks += total

    def allocate(self, requests: ArrayLike, tokens: ArrayLike) -> None:
        """First blocks of requests that hold none (``grow`` with that checked)."""
        if self.held(requests).any():
            raise KVOverflow("KV blocks allocated to a request that already holds some")
        self.grow(requests, tokens)

    def free(self, requests: ArrayLike) -> None:
        """Release every block the (distinct) ``requests`` hold."""
        ids = np.atleast_1d(np.asarray(requests, dtype=np.int64))
        ids = ids[ids < self._held_R.size]
        self.used_blocks -= int(self._held_R[ids].sum())
        self._held_R[ids] = 0
