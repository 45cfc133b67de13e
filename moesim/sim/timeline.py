"""Spans of the traced steps: what each GPU's compute and comm streams do, and when.

Within a step, MoE layer ``l`` starts when the previous combine ends: each GPU's compute
stream runs its attention/dense/router work, waits for the slowest GPU, the comm stream runs
the count exchange, dispatch and combine, and the compute stream runs the GPU's experts in
between (with buffering, the copy stream shows the expert copies they wait for). Work after
the last MoE layer (dense tail, LM head) follows. Under two-batch overlap the spans are the
two micro-batches' ops on both streams, as ``sim/overlap`` scheduled them.
"""

from __future__ import annotations

import numpy as np

from moesim.metrics import SpanRecords
from moesim.sim.chunk import ChunkTiming
from moesim.sim.local_work import LocalWork
from moesim.sim.overlap import OPS, TwoBatchTimeline

__all__ = ["step_spans"]


Span = tuple[int, str, str, int, float, float]  # GPU, stream, name, MoE layer, start, seconds


def step_spans(
    step: int,
    start_s: float,
    index: int,
    local: LocalWork,
    timing: ChunkTiming,
    expert_LG: np.ndarray | None = None,
    extra: list[Span] | None = None,
) -> SpanRecords:
    """Spans of step ``step`` (row ``index`` of ``timing``), starting at ``start_s``. With
    buffering, ``expert_LG`` gives each GPU's expert phase (copy waits included) and ``extra``
    the copy engines' spans."""
    gpus = local.attention_G.size
    if timing.overlap is not None:
        return _two_batch_spans(step, start_s, index, timing.overlap, gpus)
    rows: list[Span] = list(extra or [])
    pre_attention, pre_dense = local.pre_attention_LG, local.pre_dense_LG
    clock = start_s
    for layer in range(pre_attention.shape[0]):
        for gpu in range(gpus):
            t = clock
            for stream, name, seconds in (
                ("compute", "attention", pre_attention[layer, gpu]),
                ("compute", "dense_ffn", pre_dense[layer, gpu]),
                ("comm", "allreduce", local.pre_allreduce_LG[layer, gpu]),
                ("compute", "gate", local.gate_G[gpu]),
            ):
                if seconds > 0:
                    rows.append((gpu, stream, name, layer, t, seconds))
                    t += seconds
        clock += local.pre_LG[layer].max()
        for name, seconds in (
            ("count_exchange", timing.count_NL[index, layer]),
            ("dispatch", timing.dispatch_NL[index, layer]),
        ):
            if seconds > 0:
                rows += [(gpu, "comm", name, layer, clock, seconds) for gpu in range(gpus)]
                clock += seconds
        expert_G = timing.expert_NLG[index, layer] if expert_LG is None else expert_LG[layer]
        rows += [
            (gpu, "compute", "expert", layer, clock, expert_G[gpu])
            for gpu in range(gpus)
            if expert_G[gpu] > 0
        ]
        clock += expert_G.max()
        combine = timing.combine_NL[index, layer]
        if combine > 0:
            rows += [(gpu, "comm", "combine", layer, clock, combine) for gpu in range(gpus)]
            clock += combine
    for gpu in range(gpus):
        t = clock
        for stream, name, seconds in (
            ("compute", "attention", local.tail_blocks * local.attention_G[gpu]),
            ("compute", "dense_ffn", local.tail_dense * local.dense_G[gpu]),
            ("comm", "allreduce", local.tail_allreduce_G[gpu]),
            ("compute", "lm_head", local.lm_head_G[gpu]),
        ):
            if seconds > 0:
                rows.append((gpu, stream, name, -1, t, seconds))
                t += seconds
    return _spans(rows, step)


def _two_batch_spans(
    step: int, start_s: float, index: int, timeline: TwoBatchTimeline, gpus: int
) -> SpanRecords:
    """Both micro-batches' ops on every GPU's compute and communication streams (the GPUs
    run them in lock step)."""
    rows: list[Span] = []
    starts_LO, durations_LO = timeline.start_NLO[index], timeline.duration_NLO[index]
    for layer in range(starts_LO.shape[0]):
        for o, (name, stream, batch) in enumerate(OPS):
            seconds = durations_LO[layer, o]
            if seconds > 0:
                label = f"{name} (micro-batch {batch})"
                start = start_s + starts_LO[layer, o]
                rows += [(gpu, stream, label, layer, start, seconds) for gpu in range(gpus)]
    for batch in (0, 1):
        tail = timeline.tail_duration_NM[index, batch]
        if tail > 0:
            start = start_s + timeline.tail_start_NM[index, batch]
            label = f"tail (micro-batch {batch})"
            rows += [(gpu, "compute", label, -1, start, tail) for gpu in range(gpus)]
    return _spans(rows, step)


def _spans(rows: list[Span], step: int) -> SpanRecords:
    if not rows:
        return SpanRecords.empty()
    device, stream, name, layer, start, duration = zip(*rows, strict=True)
    return SpanRecords(
        device=np.array(device),
        stream=np.array(stream),
        name=np.array(name),
        step=np.full(len(rows), step),
        layer=np.array(layer),
        start_s=np.array(start),
        duration_s=np.array(duration),
    )
