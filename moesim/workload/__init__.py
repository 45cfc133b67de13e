"""Routing sources (synthetic, trace files) and the stream of steps a scenario runs."""

from moesim.workload.stream import (
    StepChunk,
    chunk_steps,
    routing_chunks,
    routing_rng,
    tokens_per_gpu,
)
from moesim.workload.synthetic import SyntheticRouter, rank_table, zipf_weights
from moesim.workload.trace import load_trace, recut

__all__ = [
    "StepChunk",
    "SyntheticRouter",
    "chunk_steps",
    "load_trace",
    "rank_table",
    "recut",
    "routing_chunks",
    "routing_rng",
    "tokens_per_gpu",
    "zipf_weights",
]
