"""One model card's operators timed as the reference executor runs them: a ModelTables dict.

The executor's own code runs (``calibrate.model_stack``), timed by its own ``PhaseTimer``, so
each table holds what the executor's phase of that name measures: the attention block by
decode context and prefill length, an MoE layer's gate phase (router, top-k, reorders,
gathers, scatter-add, residual) under dynamic, static-index and static-einsum gating, the local
part of its all-to-alls on one rank, one expert by rows in the executor's loop over experts, an
FFN, the LM head, an expert's copy into its slot, and what a layer spends outside any phase
(``glue``). Each figure is per call, the median over repeats of a pass through every copy of
the layer (``ModelStack.copies``), after a warm-up pass.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from moesim.calibrate.fit import monotone
from moesim.calibrate.measure import significant
from moesim.calibrate.model_stack import ModelStack, route
from moesim.calibrate.timing import synchronize
from moesim.config import ModelSpec
from moesim.config.model_tables import ModelShapes
from moesim.metrics import PHASES
from moesim.policies import CacheCounters
from moesim.reference.blocks import ffn
from moesim.reference.comm import Comm
from moesim.reference.timer import PhaseTimer

__all__ = ["CAPACITY_FACTORS", "MODEL_GRIDS", "measure_model", "model_steps"]

Grid = Literal["full", "quick"]
Progress = Callable[[str, int, int], None]
CAPACITY_FACTORS = [1.0, 2.0]


def _doubling(low: int, high: int) -> list[int]:
    return [2**p for p in range(low.bit_length() - 1, high.bit_length())]


# tokens: gate, all-to-all, FFN, LM head, glue; rows: one expert; decode: tokens x context;
# prefill: sequences x seq_len
MODEL_GRIDS: dict[str, dict[str, list[int]]] = {
    "full": {
        "tokens": _doubling(1, 1024),
        "rows": _doubling(1, 1024),
        "decode_tokens": [1, 4, 16, 64],
        "context": [32, 128, 512],
        "sequences": [1, 2, 4],
        "seq_len": [16, 32, 64, 128, 256],
    },
    "quick": {
        "tokens": [1, 4, 16],
        "rows": [1, 4, 16],
        "decode_tokens": [1, 4],
        "context": [8, 32],
        "sequences": [1, 2],
        "seq_len": [8, 16],
    },
}
_SMALL = 64  # up to this many rows, passes cycle through every copy; beyond, one is enough
_CACHE_BYTES = 256 * 2**20  # K/V caches cycled through in decode, at most
_TRIES, _BUDGET_S = 6, 0.05  # passes of one measurement, at most; time worth spending


def _significant(values: list[float]) -> list[float]:
    return [significant(v) for v in values]


def _curve(axis: str, points: list[int], seconds: list[float]) -> dict[str, Any]:
    """A curve made non-decreasing (more work never takes less time: a dip is noise)."""
    return {axis: [float(p) for p in points], "seconds": _significant(monotone(seconds))}


def _phases(run: Callable[[PhaseTimer], int], stack: ModelStack) -> dict[str, float]:
    """Median seconds per call of each phase, and of what each pass spent outside them
    (``untimed``), of ``run``, which makes its calls under the executor's timer and returns
    how many it made: what that timer reads in a real run, wall time as there. Each pass
    starts from caches as a step of the executor leaves them (``ModelStack.evict``)."""
    device = stack.device
    timer = PhaseTimer(device)
    run(timer)
    synchronize(device)
    timer.collect()
    samples: list[list[float]] = []
    spent_s = 0.0
    while len(samples) < 3 or (spent_s < _BUDGET_S and len(samples) < _TRIES):
        stack.evict()
        synchronize(device)
        begin = time.perf_counter()
        calls = run(timer)
        synchronize(device)
        wall = time.perf_counter() - begin
        spent_s += wall
        phases = timer.collect()
        samples.append([s / calls for s in phases] + [(wall - sum(phases)) / calls])
    return {
        name: statistics.median(column)
        for name, column in zip([*PHASES, "untimed"], zip(*samples, strict=True), strict=True)
    }


def _passes(stack: ModelStack, rows: int) -> int:
    return stack.copies if rows <= _SMALL else 1


def _rows(stack: ModelStack, count: int) -> torch.Tensor:
    return torch.randn(count, stack.model.d_model).to(stack.device, stack.dtype)


def _moe(stack: ModelStack, tokens: int, capacity: int | None, einsum: bool) -> dict[str, float]:
    """Phases of the MoE layers (a world of one rank) over ``tokens`` tokens."""
    gen = torch.Generator().manual_seed(tokens)
    layers = stack.gated(capacity, einsum)[: _passes(stack, tokens)]
    routes = [route(tokens, stack.model, gen, stack.device, capacity) for _ in layers]
    x, comm = _rows(stack, tokens), Comm(0, 1)

    def run(timer: PhaseTimer) -> int:
        for layer, path in zip(layers, routes, strict=True):
            layer(x, path, comm, timer, CacheCounters())
        return len(layers)

    return _phases(run, stack)


def _capacity(model: ModelSpec, tokens: int, factor: float) -> int:
    return max(1, math.ceil(factor * tokens * model.top_k / model.num_experts))


def _expert(stack: ModelStack, rows: int) -> float:
    """One expert's FFN over ``rows`` rows, in the executor's loop over a layer's experts."""
    experts = stack.model.num_experts
    grouped = [_rows(stack, rows) for _ in range(experts)]
    stores = [m.store for m in stack.moe[: _passes(stack, rows * experts)]]

    def run(timer: PhaseTimer) -> int:
        for store in stores:
            store.run(grouped, None, timer, CacheCounters())
        return len(stores) * experts

    return _phases(run, stack)["expert"]


def _ffn(stack: ModelStack, weights: list, tokens: int) -> float:
    """A dense FFN with its residual, as the executor's ``dense_ffn`` phase runs it."""
    x, weights = _rows(stack, tokens), weights[: _passes(stack, tokens)]

    def run(timer: PhaseTimer) -> int:
        for w in weights:
            with timer.phase("dense_ffn"):
                _ = x + ffn(x, w)
        return len(weights)

    return _phases(run, stack)["dense_ffn"]


def _lm_head(stack: ModelStack, tokens: int) -> float:
    x, positions = _rows(stack, tokens), torch.arange(tokens, device=stack.device)

    def run(timer: PhaseTimer) -> int:
        with timer.phase("other"):
            _ = x[positions] @ stack.lm_head
        return 1

    return _phases(run, stack)["other"]


def _attention(stack: ModelStack, tokens: int, positions: int, decode: bool) -> float:
    """An attention block over ``tokens`` rows: decoding that many sequences over
    ``positions`` each, or prefilling whole prompts of ``positions`` tokens."""
    first = stack.blocks[0]
    if decode:
        shape = (tokens, 2, first.kv_heads, positions, first.head_dim)
        size = math.prod(shape) * stack.dtype.itemsize
        count = max(1, min(stack.copies, _CACHE_BYTES // size))
        caches = [torch.zeros(shape, dtype=stack.dtype, device=stack.device) for _ in range(count)]
    else:
        count = _passes(stack, tokens)
        caches = [b.prompt_cache(tokens, stack.dtype, stack.device) for b in stack.blocks[:count]]
    x = _rows(stack, tokens)

    def run(timer: PhaseTimer) -> int:
        for block, cache in zip(stack.blocks, caches, strict=False):
            with timer.phase("attention"):
                block(x, cache, positions)
        return len(caches)

    return _phases(run, stack)["attention"]


def _expert_copy(stack: ModelStack) -> float:
    """One expert's weights copied from host memory into its device slot, as the executor's
    buffered layers do on a miss, each time another expert (never one just read)."""
    turn = iter(range(10**9))
    count = stack.host.w_in.shape[0]

    def run(timer: PhaseTimer) -> int:
        with timer.phase("transfer"):
            source = stack.host.select(next(turn) % count)
            for src, dst in zip(source.tensors(), stack.slot.tensors(), strict=True):
                dst.copy_(src, non_blocking=True)
        return 1

    return _phases(run, stack)["transfer"]


def model_steps(grid: Grid, dense: bool) -> int:
    """Measurements a calibration of one card makes (its progress total); ``dense``: the card
    has dense layers of another width than its experts'."""
    g = MODEL_GRIDS[grid]
    tokens = len(g["tokens"])
    gating = tokens * (1 + 2 * len(CAPACITY_FACTORS))
    attention = len(g["decode_tokens"]) * len(g["context"]) + len(g["sequences"]) * len(
        g["seq_len"]
    )
    return gating + len(g["rows"]) + (2 + dense) * tokens + attention + 1


def measure_model(
    stack: ModelStack, grid: Grid, done: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The ModelTables dict (without provenance) of ``stack``'s card, each measurement
    followed by ``done()``; ``model_steps`` of them."""
    g, model = MODEL_GRIDS[grid], stack.model
    tick = done or (lambda: None)

    def each(values: list[int], measure: Callable[[int], Any]) -> list[Any]:
        out = []
        for value in values:
            out.append(measure(value))
            tick()
        return out

    with torch.inference_mode():
        dynamic = each(g["tokens"], lambda t: _moe(stack, t, None, False))
        static = {
            (factor, einsum): each(
                g["tokens"], lambda t, f=factor, e=einsum: _moe(stack, t, _capacity(model, t, f), e)
            )
            for einsum in (False, True)
            for factor in CAPACITY_FACTORS
        }
        expert = each(g["rows"], lambda r: _expert(stack, r))
        ffn_s = each(g["tokens"], lambda t: _ffn(stack, stack.ffn, t))
        dense = stack.dense
        dense_s = None if dense is None else each(g["tokens"], lambda t: _ffn(stack, dense, t))
        lm_head = each(g["tokens"], lambda t: _lm_head(stack, t))
        decode = [
            each(g["decode_tokens"], lambda t, c=c: _attention(stack, t, c, True))
            for c in g["context"]
        ]
        prefill = [
            each(g["sequences"], lambda s, n=n: _attention(stack, s * n, n, False))
            for n in g["seq_len"]
        ]
        copy_s = _expert_copy(stack)
        tick()

    def gate_grid(einsum: bool) -> dict[str, Any]:
        rows = [[p["gate"] for p in static[(f, einsum)]] for f in CAPACITY_FACTORS]
        return {
            "tokens": [float(t) for t in g["tokens"]],
            "capacity_factor": CAPACITY_FACTORS,
            "seconds": [_significant(monotone(r)) for r in rows],
        }

    untimed = [max(p["untimed"], 1e-9) for p in dynamic]
    tables: dict[str, Any] = {
        "model": model.name,
        "shapes": ModelShapes.of(model).model_dump(),
        "attention_decode": {
            "tokens": [float(t) for t in g["decode_tokens"]],
            "context": [float(c) for c in g["context"]],
            "seconds": [_significant(monotone(r)) for r in decode],
        },
        "attention_prefill": {
            "sequences": [float(s) for s in g["sequences"]],
            "seq_len": [float(n) for n in g["seq_len"]],
            "seconds": [_significant(monotone(r)) for r in prefill],
        },
        "gate_dynamic": _curve("tokens", g["tokens"], [p["gate"] for p in dynamic]),
        "gate_static": gate_grid(False),
        "gate_einsum": gate_grid(True),
        "alltoall_dynamic": _curve("tokens", g["tokens"], [p["alltoall"] for p in dynamic]),
        "alltoall_static": _curve(
            "tokens", g["tokens"], [p["alltoall"] for p in static[(CAPACITY_FACTORS[0], False)]]
        ),
        "expert": _curve("rows", g["rows"], expert),
        "ffn": _curve("tokens", g["tokens"], ffn_s),
        "lm_head": _curve("tokens", g["tokens"], lm_head),
        "glue": _curve("tokens", g["tokens"], untimed),
        "expert_copy": _significant([copy_s])[0],
    }
    if dense_s is not None:
        tables["dense_ffn"] = _curve("tokens", g["tokens"], dense_s)
    return tables
