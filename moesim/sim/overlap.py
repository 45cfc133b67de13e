"""Two-batch overlap: the timeline of two micro-batches on a compute and a communication stream.

Each MoE layer runs, per micro-batch, its local work (``pre``: attention, dense FFNs,
all-reduces, router), the dispatch (with any count exchange), the experts and the combine.
Compute ops take the compute stream in the order pre 0, pre 1, experts 0, experts 1;
communication ops take the communication stream in the order dispatch 0, dispatch 1, combine 0,
combine 1; each op also waits for the op before it in its own micro-batch (DeepSeek's dual
micro-batch and SGLang's two-batch overlap schedule). After the last layer each micro-batch
runs its tail (dense layers, LM head). The two micro-batches are the step's tokens halved on
every GPU (the first gets the odd one); arrays are over steps ``N`` and layers ``L``.
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
    tail_duration_NM: np.ndarray
    latency_N: np.ndarray


def two_batch(
    pre_MNL: np.ndarray,
    dispatch_MNL: np.ndarray,
    expert_MNL: np.ndarray,
    combine_MNL: np.ndarray,
    tail_MN: np.ndarray,
) -> TwoBatchTimeline:
    """The schedule of two micro-batches ``M`` (module doc); each argument gives both
    micro-batches' durations, or one set that both take (it broadcasts)."""
    n, layers = np.shape(pre_MNL)[-2:]
    start_NLO = np.zeros((n, layers, len(OPS)))
    duration = {
        name: np.broadcast_to(values, (2, n, layers))
        for name, values in (
            ("attention+router", pre_MNL),
            ("dispatch", dispatch_MNL),
            ("expert", expert_MNL),
            ("combine", combine_MNL),
        )
    }
    duration_NLO = np.stack([duration[name][batch] for name, _, batch in OPS], axis=-1)
    tail_2N = np.broadcast_to(tail_MN, (2, n))
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
        free["compute"] = tail_start_NM[:, batch] + tail_2N[batch]
    return TwoBatchTimeline(start_NLO, duration_NLO, tail_start_NM, tail_2N.T, free["compute"])
