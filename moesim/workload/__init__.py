"""Routing sources (synthetic, trace files) and the stream of steps a scenario runs."""

from moesim.workload.stream import (
    StepChunk,
    chunk_steps,
    routing_chunks,
    routing_rng,
    tokens_per_gpu,
)
from moesim.workload.synthetic import SyntheticRouter, rank_table, zipf_weights
from moesim.workload.trace import Trace, check_ids, load_trace, read_trace, recut, save_trace

__all__ = [
    "StepChunk",
    "SyntheticRouter",
    "Trace",
    "check_ids",
    "chunk_steps",
    "load_trace",
    "rank_table",
    "read_trace",
    "recut",
    "routing_chunks",
    "routing_rng",
    "save_trace",
    "tokens_per_gpu",
    "zipf_weights",
]
