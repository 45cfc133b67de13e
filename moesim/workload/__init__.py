"""Request streams (arrivals, lengths, request traces), routing sources (synthetic, trace
files) and the stream of steps a scenario runs."""

from moesim.workload.request_traces import MAX_TOKENS, load_request_trace, save_request_trace
from moesim.workload.requests import (
    REQUEST_STREAM,
    Requests,
    arrival_times,
    draw_lengths,
    request_table,
)
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
    "MAX_TOKENS",
    "REQUEST_STREAM",
    "Requests",
    "StepChunk",
    "SyntheticRouter",
    "Trace",
    "arrival_times",
    "check_ids",
    "chunk_steps",
    "draw_lengths",
    "load_request_trace",
    "load_trace",
    "rank_table",
    "read_trace",
    "recut",
    "request_table",
    "routing_chunks",
    "routing_rng",
    "save_request_trace",
    "save_trace",
    "tokens_per_gpu",
    "zipf_weights",
]
