"""One rank of a reference run: builds its share of the model with real weights, replays the
workplan's steps (warm-up steps first, untimed) and writes what it measured to ``out_dir``.

Every rank holds the attention and dense FFN weights of every block (data-parallel, as the
simulator assumes) and its placement's experts of each MoE layer. Ranks start a step together
after a barrier and stamp its start and end on the machine's monotonic clock (shared by all
processes); phases are timed on each rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from moesim.config import LINK_KINDS, Scenario
from moesim.policies import CacheCounters, PlacementPlan, build_caches
from moesim.reference.blocks import TORCH_DTYPES, AttentionBlock, FfnWeights, ffn, random_weight
from moesim.reference.comm import Comm
from moesim.reference.experts import ExpertStore
from moesim.reference.moe import LayerRoute, MoeAccount, MoeLayer
from moesim.reference.timer import PhaseTimer
from moesim.reference.workplan import Workplan

__all__ = [
    "account",
    "build_layers",
    "link_kinds",
    "rank_session",
    "run_rank",
    "synchronize",
    "weight_bytes",
]


def _store(work: Workplan, layer: int, rank: int, caches, gen, dtype, device) -> ExpertStore:
    model = work.scenario.model
    units = np.flatnonzero(work.plan.owner_LU[layer] == rank)
    weights = FfnWeights.random(model, model.d_ffn, (units.size,), gen, dtype, "cpu")
    if not work.buffered:
        return ExpertStore(units, resident=_to(weights, device))
    slots = work.scenario.policies.cache.slots_per_layer
    host = weights if device.type == "cpu" else _pinned(weights)
    empty = FfnWeights(
        *(
            torch.empty((slots, *t.shape[1:]), dtype=dtype, device=device)
            for t in (weights.w_in, weights.w_out)
        )
    )
    if weights.w_gate is not None:
        empty.w_gate = torch.empty_like(empty.w_in)
    return ExpertStore(units, host=host, slots=empty, cache=caches[rank, layer])


def _to(w: FfnWeights, device) -> FfnWeights:
    gate = w.w_gate.to(device) if w.w_gate is not None else None
    return FfnWeights(w.w_in.to(device), w.w_out.to(device), gate)


def _pinned(w: FfnWeights) -> FfnWeights:
    gate = w.w_gate.pin_memory() if w.w_gate is not None else None
    return FfnWeights(w.w_in.pin_memory(), w.w_out.pin_memory(), gate)


def build_layers(
    scenario: Scenario,
    plan: PlacementPlan,
    store_of: Callable[[int], ExpertStore],
    capacity_G: np.ndarray | None,
    einsum: bool,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
) -> list[MoeLayer | FfnWeights]:
    """Each block's FFN with real weights: an MoE layer (router, ``store_of(moe_index)``'s
    experts, shared experts) or a dense FFN."""
    model = scenario.model
    dense_ffn = model.dense_d_ffn or model.d_ffn
    layers: list[MoeLayer | FfnWeights] = []
    for index in range(model.stacks()[scenario.stack()]):
        if not model.is_moe_layer(index):
            layers.append(FfnWeights.random(model, dense_ffn, (), gen, dtype, device))
            continue
        shared = [
            FfnWeights.random(model, model.d_ffn, (), gen, dtype, device)
            for _ in range(model.shared_experts)
        ]
        gate = random_weight((model.d_model, model.num_experts), model.d_model, gen, dtype, device)
        moe = sum(isinstance(layer, MoeLayer) for layer in layers)
        layers.append(
            MoeLayer(
                gate=gate,
                owner_U=plan.owner_LU[moe],
                store=store_of(moe),
                capacity_G=capacity_G,
                einsum=einsum,
                gpus=plan.gpus,
                shared=shared,
            )
        )
    return layers


def weight_bytes(attention: list[AttentionBlock], layers: list, lm_head: torch.Tensor) -> float:
    """Bytes of the weights a rank holds on its device (for buffered layers, the slots)."""
    tensors = [t for a in attention for t in (a.qkv, a.out, a.norm_weight, a.norm_bias)]
    tensors.append(lm_head)
    for layer in layers:
        if isinstance(layer, FfnWeights):
            tensors += layer.tensors()
            continue
        tensors.append(layer.gate)
        store = layer.store
        tensors += (store.resident or store.slots).tensors()
        tensors += [t for w in layer.shared or [] for t in w.tensors()]
    return float(sum(t.numel() * t.element_size() for t in tensors))


def account(
    layers: list[MoeAccount], counters: CacheCounters, kinds: np.ndarray, head_bytes: float
) -> dict:
    """One step's accounting on one rank: what its MoE layers kept, padded, received and sent
    (bytes per link kind), its activation peak and its cache counters."""
    sent_K = np.zeros(len(LINK_KINDS))
    for layer in layers:
        np.add.at(sent_K, kinds, layer.sent_bytes_G)
    sent_K[LINK_KINDS.index("local")] = 0.0
    return {
        "processed": sum(layer.processed for layer in layers),
        "padded": sum(layer.padded for layer in layers),
        "received_L": [layer.received for layer in layers],
        "sent_K": sent_K,
        "activation": max([layer.activation_bytes for layer in layers] + [head_bytes]),
        "cache": [counters.hits, counters.misses, counters.evictions, counters.copies],
    }


def link_kinds(rank: int, gpus: int, per_node: int) -> np.ndarray:
    """Link kind (index into ``LINK_KINDS``) from this rank to each rank."""
    same_node = np.arange(gpus) // per_node == rank // per_node
    kinds = np.where(same_node, LINK_KINDS.index("nvlink"), LINK_KINDS.index("network"))
    kinds[rank] = LINK_KINDS.index("local")
    return kinds


class _Rank:
    def __init__(self, rank: int, work: Workplan, device: torch.device) -> None:
        scenario = work.scenario
        model, workload = scenario.model, scenario.workload
        self.rank, self.work, self.device = rank, work, device
        dtype = TORCH_DTYPES[model.dtype]
        gen = torch.Generator().manual_seed(scenario.seed * 1009 + rank)
        self.tokens = int(work.tokens_G[rank])
        self.first = int(work.offsets_G[rank])
        self.decode = workload.phase == "decode"
        self.seq_len = workload.seq_len
        blocks = model.stacks()[scenario.stack()]
        self.attention = [AttentionBlock(model, gen, dtype, device) for _ in range(blocks)]
        self.kv = [
            a.kv_cache(self.tokens, self.seq_len, gen, dtype, device)
            if self.decode
            else a.prompt_cache(self.tokens, dtype, device)
            for a in self.attention
        ]
        caches = build_caches(scenario, work.plan, work.future) if work.buffered else None
        self.caches = caches
        self.layers = build_layers(
            scenario,
            work.plan,
            lambda moe: _store(work, moe, rank, caches, gen, dtype, device),
            work.capacity_G,
            work.einsum_dispatch,
            gen,
            dtype,
            device,
        )
        self.lm_head = random_weight(
            (model.d_model, model.vocab_size), model.d_model, gen, dtype, device
        )
        if self.decode or workload.logits == "all":
            self.lm_rows = torch.arange(self.tokens, device=device)
        else:
            self.lm_rows = torch.arange(self.seq_len - 1, self.tokens, self.seq_len, device=device)
        self.x = torch.randn((self.tokens, model.d_model), generator=gen).to(device, dtype)
        self.kinds = link_kinds(rank, work.plan.gpus, scenario.cluster.gpus_per_node)

    def resident_bytes(self) -> tuple[float, float]:
        """Bytes of weights on the device and of KV cache."""
        kv = sum(c.numel() * c.element_size() for c in self.kv)
        return weight_bytes(self.attention, self.layers, self.lm_head), float(kv)

    def routes(self, step: int) -> list[LayerRoute]:
        """This rank's tokens' routing in each MoE layer of measured step ``step``."""
        work, mine = self.work, slice(self.first, self.first + self.tokens)
        device = self.device
        kept = work.kept_NLTK
        return [
            LayerRoute(
                units=_index(work.units_NLTK[step, layer, mine], device),
                logical=_index(work.logical_NLTK[step, layer, mine], device),
                kept=None
                if kept is None
                else torch.as_tensor(kept[step, layer, mine], device=device),
            )
            for layer in range(work.units_NLTK.shape[1])
        ]

    def step(
        self, routes: list[LayerRoute], comm: Comm, timer: PhaseTimer
    ) -> tuple[list[MoeAccount], CacheCounters]:
        """One step's work; its accounting is left to ``record`` outside the timed span."""
        x = self.x
        counters = CacheCounters()
        accounts = []
        moe = 0
        for index, layer in enumerate(self.layers):
            with timer.phase("attention"):
                x = self.attention[index](x, self.kv[index], self.seq_len)
            if isinstance(layer, MoeLayer):
                x, account = layer(x, routes[moe], comm, timer, counters)
                accounts.append(account)
                moe += 1
            else:
                with timer.phase("dense_ffn"):
                    x = x + ffn(x, layer)
        with timer.phase("other"):
            logits = x[self.lm_rows] @ self.lm_head
        self.head_bytes = 2 * x.numel() * x.element_size() + logits.numel() * logits.element_size()
        return accounts, counters

    def record(self, layers: list[MoeAccount], counters: CacheCounters) -> dict:
        return account(layers, counters, self.kinds, self.head_bytes)


def _index(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(array.astype(np.int64), device=device)


def run_rank(
    rank: int, world: int, work: Workplan, device_name: str, out_dir: str, warmup: int
) -> None:
    """Entry point of a rank process (``torch.multiprocessing.spawn``) or of a one-rank run."""
    rank_session(
        rank,
        world,
        device_name,
        out_dir,
        lambda device: _measure(rank, world, work, device, Path(out_dir), warmup),
    )


def rank_session(
    rank: int,
    world: int,
    device_name: str,
    out_dir: str,
    body: Callable[[torch.device], None],
) -> None:
    """Run ``body(device)`` as rank ``rank`` of ``world``: one thread per rank on CPU, its GPU
    on CUDA, in the process group (rendezvous through a file in ``out_dir``) when ``world > 1``.

    A failure is written to ``out_dir/error<rank>`` with the time it happened, so that the
    parent reports the first cause rather than the other ranks' broken connections.
    """
    cuda = device_name.startswith("cuda")
    device = torch.device(f"cuda:{rank}" if cuda and world > 1 else device_name)
    threads = torch.get_num_threads()
    if cuda:
        torch.cuda.set_device(device)  # events, streams and synchronise act on this GPU
    else:
        torch.set_num_threads(1)  # one core per rank, as calibration measures
    try:
        if world > 1:
            dist.init_process_group(
                "nccl" if cuda else "gloo",
                init_method=f"file://{Path(out_dir) / 'store'}",
                rank=rank,
                world_size=world,
                device_id=device if cuda else None,
            )
        body(device)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        (Path(out_dir) / f"error{rank}").write_text(f"{time.time()}\n{message}")
        raise
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU, where ops run when called)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(
    rank: int, world: int, work: Workplan, device: torch.device, out_dir: Path, warmup: int
) -> None:
    comm = Comm(rank, world)
    me = _Rank(rank, work, device)
    timer = PhaseTimer(device)
    steps = work.units_NLTK.shape[0]
    columns: dict[str, list] = {k: [] for k in ("start", "end", "phases", "processed", "padded")}
    columns |= {k: [] for k in ("received_L", "sent_K", "activation", "cache")}
    progress = out_dir / "progress"
    with torch.inference_mode():
        for index in range(warmup + steps):
            if index == warmup:  # measured steps start from the policy's initial caches
                me = _reset_caches(me, work, rank)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
            step = (index - warmup) % steps
            routes = me.routes(step)
            comm.barrier()
            synchronize(device)
            start = time.perf_counter()
            accounts, counters = me.step(routes, comm, timer)
            synchronize(device)
            end = time.perf_counter()
            comm.barrier()
            phases = timer.collect()
            if index < warmup:
                continue
            record = me.record(accounts, counters)
            columns["start"].append(start)
            columns["end"].append(end)
            columns["phases"].append(phases)
            for key, value in record.items():
                columns[key].append(value)
            if rank == 0:
                progress.write_text(str(index - warmup + 1))
    weights, kv = me.resident_bytes()
    peak = float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else np.nan
    np.savez(
        out_dir / f"rank{rank}.npz",
        **{key: np.asarray(value, dtype=np.float64) for key, value in columns.items()},
        weights=weights,
        kv=kv,
        allocator_peak=peak,
    )


def _reset_caches(me: _Rank, work: Workplan, rank: int) -> _Rank:
    """Fresh caches (and slots) for the measured steps, as the simulator starts them."""
    if not work.buffered:
        return me
    caches = build_caches(work.scenario, work.plan, work.future)
    moe = 0
    for layer in me.layers:
        if isinstance(layer, MoeLayer):
            old = layer.store
            layer.store = ExpertStore(
                old.units, host=old.host, slots=old.slots, cache=caches[rank, moe]
            )
            moe += 1
    return me
