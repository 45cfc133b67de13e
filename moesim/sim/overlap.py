"""Two-batch overlap: the timeline of two micro-batches on a compute and a communication stream.

Each MoE layer runs, per micro-batch, its local work (``pre``: attention, dense FFNs,
all-reduces, router), the dispatch (with any count exchange), the experts and the combine.
Compute ops take the compute stream in the order pre 0, pre 1, experts 0, experts 1;
communication ops take the communication stream in the order dispatch 0, dispatch 1, combine 0,
combine 1; each op also waits for the op before it in its own micro-batch (DeepSeek's dual
micro-batch and SGLang's two-batch overlap schedule). After the last layer each micro-batch
runs its tail (dense layers, LM head). The two micro-batches are the step's tokens halved on
every GPU, so both take the same durations; arrays are over steps ``N`` and layers ``L``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OPS", "TwoBatchTimeline", "two_batch"]

# op, stream and micro-batch, in the order the schedule issues them within a layer ("attention+
# router" is the local work before the dispatch: attention, dense FFNs, all-reduces, router)
OPS = (
    ("attention+router", "compute", 0),
    ("attention+router", "compute", 1),
    ("dispatch", "comm", 0),
    ("dispatch", "comm", 1),
    ("expert", "compute", 0),
    ("expert", "compute", 1),
    ("combine", "comm", 0),
    ("combine", "comm", 1),
)


@dataclass(frozen=True)
class TwoBatchTimeline:
    """When each op starts and how long it lasts, from the step's start: ``*_NLO`` over the
    ``OPS`` of each layer, ``tail_*_NM`` per micro-batch ``M``; ``latency_N``."""

    start_NLO: np.ndarray
    duration_NLO: np.ndarray
    tail_start_NM: np.ndarray
    tail_duration_N: np.ndarray
    latency_N: np.ndarray


def two_batch(
    pre_NL: np.ndarray,
    dispatch_NL: np.ndarray,
    expert_NL: np.ndarray,
    combine_NL: np.ndarray,
    tail_N: np.ndarray,
) -> TwoBatchTimeline:
    """The schedule of two micro-batches of one micro-batch's durations each (module doc)."""
    n, layers = pre_NL.shape
    start_NLO = np.zeros((n, layers, len(OPS)))
    duration = {
        "attention+router": pre_NL,
        "dispatch": dispatch_NL,
        "expert": expert_NL,
        "combine": combine_NL,
    }
    duration_NLO = np.stack([duration[name] for name, _, _ in OPS], axis=-1)
    free = {"compute": np.zeros(n), "comm": np.zeros(n)}
    done_M = [np.zeros(n), np.zeros(n)]  # when each micro-batch's previous op ended
    for layer in range(layers):
        for o, (_, stream, batch) in enumerate(OPS):
            start = np.maximum(free[stream], done_M[batch])
            start_NLO[:, layer, o] = start
            free[stream] = done_M[batch] = start + duration_NLO[:, layer, o]
    tail_start_NM = np.zeros((n, 2))
    for batch in (0, 1):
        tail_start_NM[:, batch] = np.maximum(free["compute"], done_M[batch])
        free["compute"] = tail_start_NM[:, batch] + tail_N
    return TwoBatchTimeline(start_NLO, duration_NLO, tail_start_NM, tail_N, free["compute"])
