"""Measured attention-core times: scaled-dot-product attention in decode and causal prefill.

Heads of 64 values, 8 of them. Decode: one query per sequence over a K/V cache laid out as the
reference executor keeps it (``[S, 2, heads, context, head_dim]``), timed by the K/V bytes it
reads; the caches cycle through a pool larger than the CPU's caches, so each is read from
memory as in a model. Prefill: causal attention of 2048 tokens cut into sequences of growing
length, timed by FLOPs (``4 x tokens x (length + 1) / 2 x query width``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from moesim.calibrate.device import torch_dtype
from moesim.calibrate.gemm import COLD_BYTES
from moesim.calibrate.timing import median_seconds

__all__ = ["HEADS", "HEAD_DIM", "measure_attention"]

Grid = Literal["full", "quick"]
HEADS, HEAD_DIM = 8, 64
_SEQUENCES = 16  # decode batch
_CONTEXTS = {"full": [2**p for p in range(3, 13)], "quick": [8, 32]}
_PREFILL_TOKENS = {"full": 2048, "quick": 64}
_LENGTHS = {"full": [2**p for p in range(4, 12)], "quick": [16, 64]}


def _decode(device: torch.device, dtype: torch.dtype, grid: Grid) -> tuple[list, list]:
    sizes, seconds = [], []
    element = torch.tensor([], dtype=dtype).element_size()
    largest = _SEQUENCES * 2 * HEADS * max(_CONTEXTS[grid]) * HEAD_DIM
    pool = torch.randn(max(COLD_BYTES[grid] // element, 2 * largest), dtype=dtype, device=device)
    query = torch.randn(_SEQUENCES, HEADS, 1, HEAD_DIM, dtype=dtype, device=device)
    for context in _CONTEXTS[grid]:
        shape = (_SEQUENCES, 2, HEADS, context, HEAD_DIM)
        cell = _SEQUENCES * 2 * HEADS * context * HEAD_DIM
        caches = pool[: (pool.numel() // cell) * cell].view(-1, *shape)
        turn = iter(range(10**9))

        def once(c=caches, t=turn) -> object:
            cache = c[next(t) % len(c)]
            return F.scaled_dot_product_attention(query, cache[:, 0], cache[:, 1])

        seconds.append(median_seconds(once, device))
        sizes.append(float(cell * element))
    return sizes, seconds


def _prefill(device: torch.device, dtype: torch.dtype, grid: Grid) -> tuple[list, list]:
    flops, seconds = [], []
    tokens = _PREFILL_TOKENS[grid]
    for length in _LENGTHS[grid]:
        batch = max(1, tokens // length)
        q, k, v = (
            torch.randn(batch, HEADS, length, HEAD_DIM, dtype=dtype, device=device)
            for _ in range(3)
        )
        seconds.append(
            median_seconds(
                lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                device,
            )
        )
        flops.append(4.0 * batch * length * (length + 1) / 2 * HEADS * HEAD_DIM)
    return flops, seconds


def measure_attention(
    device: torch.device, dtype: str, grid: Grid, on_done: Callable[[], None] | None = None
) -> dict[str, Any]:
    """An AttentionCurves dict for ``dtype`` on ``device``."""
    torch_type = torch_dtype(dtype)
    kv_bytes, decode_s = _decode(device, torch_type, grid)
    if on_done is not None:
        on_done()
    flops, prefill_s = _prefill(device, torch_type, grid)
    if on_done is not None:
        on_done()
    return {
        "dtype": dtype,
        "head_dim": HEAD_DIM,
        "decode_kv_bytes": kv_bytes,
        "decode_seconds": decode_s,
        "prefill_flops": flops,
        "prefill_seconds": prefill_s,
    }
