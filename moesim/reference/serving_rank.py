"""One rank of a serving reference run: one attention group with its requests' real KV caches
and its share of the experts, stepping with the other ranks.

In real time, requests arrive ``arrival_s`` after the run's start on the wall clock. Before
each step rank 0 reads the clock and shares it, with the count of requests arrived by then,
with every rank (a barrier that carries them); every rank then plans every group with the same
scheduler code (``serving_engine``), so all agree on the step; a rank whose group has nothing
to run still joins each MoE layer's all-to-alls with no rows, as an idle rank of an
expert-parallel deployment does. While no group has work, rank 0 sleeps until the next arrival
or a scheduler's timeout. In replay, the ranks run a recorded sequence of plans back to back,
``repeats`` times, after a barrier before each step.

Routing is replayed from the scenario's synthetic law (the router's GEMM runs; its top-k is
replaced), the same on every rank (``serving_routing``).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moesim.config import Scenario
from moesim.policies import CacheCounters, PlacementPlan, StepPlan
from moesim.reference.blocks import TORCH_DTYPES, AttentionBlock, FfnWeights, ffn, random_weight
from moesim.reference.comm import Comm
from moesim.reference.experts import ExpertStore
from moesim.reference.moe import LayerRoute, MoeLayer
from moesim.reference.rank import (
    account,
    build_layers,
    link_kinds,
    rank_session,
    synchronize,
    weight_bytes,
)
from moesim.reference.serving_engine import Engine, shifted
from moesim.reference.serving_kv import KVStore, Segments, StepIndex, serving_attention
from moesim.reference.serving_routing import RoutingStream
from moesim.reference.timer import PhaseTimer
from moesim.workload import Requests

__all__ = ["Replay", "ServingJob", "kv_shape", "serve_rank"]

_WARMUP_STREAM = 1  # sub-key of the warm-up steps' routing
_WARMUP_PROMPT = 64  # tokens of the warm-up prefill (at most the shortest prompt)
# what a rank measures per step (``account`` adds the rest of its columns)
_COLUMNS = ("start", "end", "phases", "tokens", "processed", "padded", "received_L", "sent_K")
_COLUMNS += ("activation", "cache")

# each group's plans and how many steps they run (a decode stretch: contexts one longer each)
Replay = list[tuple[list[StepPlan], int]]


@dataclass(frozen=True)
class ServingJob:
    """What every rank of a serving run needs: the scenario and its placement, the requests,
    each group's KV blocks, warm-up steps; for a replay, the plans and how often to run them."""

    scenario: Scenario
    plan: PlacementPlan
    requests: Requests
    kv_blocks_G: np.ndarray
    warmup: int
    replay: Replay | None = None
    repeats: int = 1


class _Shard:
    """This rank's weights (real, random, seeded), KV caches and the step it runs."""

    def __init__(self, rank: int, job: ServingJob, device: torch.device) -> None:
        scenario, plan = job.scenario, job.plan
        model = scenario.model
        self.rank, self.job, self.device = rank, job, device
        self.dtype = TORCH_DTYPES[model.dtype]
        gen = torch.Generator().manual_seed(scenario.seed * 1009 + rank)
        blocks = model.stacks()[scenario.stack()]
        self.attention = [AttentionBlock(model, gen, self.dtype, device) for _ in range(blocks)]

        def store(layer: int) -> ExpertStore:
            units = np.flatnonzero(plan.owner_LU[layer] == rank)
            weights = FfnWeights.random(model, model.d_ffn, (units.size,), gen, self.dtype, "cpu")
            return ExpertStore(units, resident=_to(weights, device))

        self.layers = build_layers(scenario, plan, store, None, False, gen, self.dtype, device)
        self.lm_head = random_weight(
            (model.d_model, model.vocab_size), model.d_model, gen, self.dtype, device
        )
        # rows entering the first block, as many as a group's step can hold (values do not
        # matter, their count does): drawn once, before the clock starts
        self.x = torch.randn((_most_tokens(job), model.d_model), generator=gen).to(
            device, self.dtype
        )
        self.kinds = link_kinds(rank, plan.gpus, scenario.cluster.gpus_per_node)
        self.moe_layers = model.moe_layers(scenario.stack())
        slots, positions = kv_shape(scenario, job.requests, job.warmup)
        self.kv = KVStore(self.attention, slots, positions, self.dtype, device)

    def routing(self) -> RoutingStream:
        """The run's routing stream, for steps of every group's tokens."""
        width = self.job.plan.gpus * self.x.shape[0]
        return RoutingStream(self.job.scenario, self.moe_layers, width)

    def routes(self, routing: RoutingStream, tokens_G: list[int]) -> list[LayerRoute]:
        """The step's routing of every group's tokens; this rank's share."""
        logical = routing.take(sum(tokens_G))
        units = self.job.plan.to_units(logical)
        first = sum(tokens_G[: self.rank])
        mine = slice(first, first + tokens_G[self.rank])

        def index(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array.astype(np.int64), device=self.device)

        return [
            LayerRoute(
                units=index(units[0, layer, mine]),
                logical=index(logical[0, layer, mine]),
                kept=None,
            )
            for layer in range(self.moe_layers)
        ]

    def step(
        self,
        segments: Segments,
        sampled: np.ndarray,
        routes: list[LayerRoute],
        comm: Comm,
        timer: PhaseTimer,
    ) -> dict:
        """One timed step: the segments' tokens through every block, logits for the rows that
        sample a token (``sampled``); returns the rank's columns for the step."""
        x = self.x[: segments.tokens]
        where = StepIndex.of(segments, self.kv.slots(segments.request), self.dtype, self.device)
        rows = torch.as_tensor(np.flatnonzero(sampled), device=self.device)
        counters = CacheCounters()
        accounts = []
        moe = 0
        synchronize(self.device)
        start = time.perf_counter()
        for block, cache, layer in zip(self.attention, self.kv.caches, self.layers, strict=True):
            if segments.tokens:
                with timer.phase("attention"):
                    x = serving_attention(block, x, where, cache)
            if isinstance(layer, MoeLayer):
                x, layer_account = layer(x, routes[moe], comm, timer, counters)
                accounts.append(layer_account)
                moe += 1
            else:
                with timer.phase("dense_ffn"):
                    x = x + ffn(x, layer)
        with timer.phase("other"):
            logits = x[rows] @ self.lm_head
        synchronize(self.device)
        end = time.perf_counter()
        head_bytes = 2 * x.numel() * x.element_size() + logits.numel() * logits.element_size()
        return {
            "start": start,
            "end": end,
            "phases": timer.collect(),
            **account(accounts, counters, self.kinds, head_bytes),
        }

    def run(
        self,
        plans: list[StepPlan],
        engine: Engine,
        routing: RoutingStream,
        comm: Comm,
        timer: PhaseTimer,
    ) -> dict:
        """The step of ``plans`` (every group's): this rank runs its group's, then every rank
        applies all of them to the engine."""
        mine = plans[self.rank]
        self.kv.free(mine.preempted)
        state = engine.states[self.rank]
        completes = mine.context + mine.new_tokens >= state.prefill_tokens_R[mine.request]
        sampled_R = ~mine.is_prefill | completes  # the last row of each such request samples
        sampled = np.zeros(mine.tokens, dtype=bool)
        sampled[np.cumsum(mine.new_tokens)[sampled_R] - 1] = True
        routes = self.routes(routing, [p.tokens for p in plans])
        segments = Segments(mine.request, mine.new_tokens, mine.context)
        columns = self.step(segments, sampled, routes, comm, timer)
        columns["tokens"] = sum(p.tokens for p in plans)
        outcomes = engine.apply(plans)
        self.kv.free(outcomes[self.rank].finished)
        return columns

    def warm_up(self, steps: int, comm: Comm, timer: PhaseTimer) -> None:
        """``steps`` untimed steps before the clock starts: a prompt on every rank, then its
        decodes (on caches discarded afterwards)."""
        world = self.job.plan.gpus
        prompt = int(min(_WARMUP_PROMPT, self.job.requests.prompt_tokens.min()))
        scenario, layers = self.job.scenario, self.moe_layers
        routing = RoutingStream(scenario, layers, world * prompt, _WARMUP_STREAM, most_steps=steps)
        scratch = np.array([-1])
        for step in range(steps):
            new = prompt if step == 0 else 1
            context = 0 if step == 0 else prompt + step - 1
            segments = Segments(scratch, np.array([new]), np.array([context]))
            sampled = np.zeros(new, dtype=bool)
            sampled[-1] = True
            comm.barrier()
            self.step(segments, sampled, self.routes(routing, [new] * world), comm, timer)
        self.kv.free(scratch)


def kv_shape(scenario: Scenario, requests: Requests, warmup: int) -> tuple[int, int]:
    """Slots and positions of a rank's KV cache: the most sequences a group runs at once (the
    scheduler's ``max_sequences`` or static batch, at most the requests), and the longest
    request's prompt and output (or the warm-up's)."""
    params = scenario.policies.scheduler
    slots = getattr(params, "max_sequences", None) or params.batch_size
    longest = int((requests.prompt_tokens + requests.output_tokens).max())
    return min(slots, len(requests)), max(longest, _WARMUP_PROMPT + warmup)


def _most_tokens(job: ServingJob) -> int:
    """The most tokens one group's step can hold: the scheduler's budget, or a static batch
    of the longest prefills (a prompt and its output, after a preemption), or the warm-up's."""
    params, requests = job.scenario.policies.scheduler, job.requests
    budget = getattr(params, "max_batch_tokens", None)
    if budget is None:
        budget = params.batch_size * int((requests.prompt_tokens + requests.output_tokens).max())
    return max(int(budget), _WARMUP_PROMPT)


def _to(w: FfnWeights, device: torch.device) -> FfnWeights:
    gate = w.w_gate.to(device) if w.w_gate is not None else None
    return FfnWeights(w.w_in.to(device), w.w_out.to(device), gate)


def serve_rank(
    rank: int,
    world: int,
    job: ServingJob,
    device_name: str,
    out_dir: str,
    on_finished: Callable[[int], None] | None = None,
) -> None:
    """Entry point of a serving rank (spawned, or in this process for one rank): writes its
    columns to ``out_dir/rank<r>.npz``; rank 0 also the engine's log and the clock's start
    (``log.pkl``) and, as requests finish, their count to ``on_finished`` (in this process)
    or to ``out_dir/progress``."""
    if on_finished is None:
        progress = Path(out_dir) / "progress"

        def on_finished(done: int) -> None:
            progress.write_text(str(done))

    rank_session(
        rank,
        world,
        device_name,
        out_dir,
        lambda device: _serve(rank, world, job, device, Path(out_dir), on_finished),
    )


def _serve(
    rank: int,
    world: int,
    job: ServingJob,
    device: torch.device,
    out: Path,
    on_finished: Callable[[int], None],
) -> None:
    comm = Comm(rank, world)
    shard = _Shard(rank, job, device)
    timer = PhaseTimer(device)
    columns: list[dict] = []
    with torch.inference_mode():
        shard.warm_up(job.warmup, comm, timer)
        if job.replay is None:
            engine, t0 = _real_time(shard, comm, timer, columns, on_finished)
        else:
            engine, t0 = _replay(shard, job.replay, comm, timer, columns)
    peak = float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else np.nan
    weights = weight_bytes(shard.attention, shard.layers, shard.lm_head)
    np.savez(
        out / f"rank{rank}.npz",
        **{key: np.asarray([c[key] for c in columns], dtype=np.float64) for key in _COLUMNS},
        weights=float(weights),
        kv=shard.kv.bytes,
        allocator_peak=peak,
    )
    if rank == 0:
        preemptions = np.sum([s.preemptions_R for s in engine.states], axis=0)
        saved = {"log": engine.log, "t0": t0, "preemptions": preemptions}
        (out / "log.pkl").write_bytes(pickle.dumps(saved))


def _real_time(
    shard: _Shard,
    comm: Comm,
    timer: PhaseTimer,
    columns: list[dict],
    on_finished: Callable[[int], None],
) -> tuple[Engine, float]:
    job = shard.job
    engine = Engine(job.scenario, job.requests, job.kv_blocks_G)
    routing = shard.routing()
    arrival_s = job.requests.arrival_s
    clock = torch.zeros(2, dtype=torch.float64)
    comm.barrier()
    t0 = time.perf_counter()
    while engine.done < engine.total:
        if comm.rank == 0:
            now = time.perf_counter() - t0
            clock[0], clock[1] = float(np.searchsorted(arrival_s, now, side="right")), now
        comm.share(clock)
        now = float(clock[1])
        engine.arrive(int(clock[0]))
        plans = engine.plan(now)
        if all(p.empty for p in plans):
            wake = engine.wake_s(now)
            if not np.isfinite(wake):  # nothing will arrive or time out: the rest stays queued
                break
            if comm.rank == 0:
                time.sleep(max(wake - (time.perf_counter() - t0), 0.0))
            continue
        done = engine.done
        columns.append(shard.run(plans, engine, routing, comm, timer))
        if comm.rank == 0 and engine.done > done:
            on_finished(engine.done)
    return engine, t0


def _replay(
    shard: _Shard, replay: Replay, comm: Comm, timer: PhaseTimer, columns: list[dict]
) -> tuple[Engine, float]:
    job = shard.job
    t0 = time.perf_counter()
    for _ in range(job.repeats):
        engine = Engine(job.scenario, job.requests, job.kv_blocks_G)
        routing = shard.routing()
        for plans, steps in replay:
            for later in range(steps):
                stepped = [shifted(p, later) for p in plans]
                engine.arrive_planned(stepped)
                comm.barrier()
                columns.append(shard.run(stepped, engine, routing, comm, timer))
    return engine, t0
