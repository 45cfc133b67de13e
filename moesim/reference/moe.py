"""One MoE layer on one rank, for real: router GEMM and top-k, dispatch all-to-all, local
experts, combine all-to-all, weighted sum with the residual.

The router runs so that its cost is real, but the replayed routing replaces its top-k, so both
sides see the same tokens go to the same experts. ``dynamic``: a count all-to-all, then
variable-size all-to-alls of exactly the routed rows. ``static``: every source sends ``C_g``
slots per expert, kept assignments in order of choice then token (the policy's ``kept``), the
rest padding; with einsum dispatch through dense ``S x E x C`` masks as fairseq does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moesim.policies import CacheCounters
from moesim.reference.blocks import ffn
from moesim.reference.comm import Comm
from moesim.reference.experts import ExpertStore
from moesim.reference.timer import PhaseTimer

__all__ = ["LayerRoute", "MoeAccount", "MoeLayer"]


@dataclass
class LayerRoute:
    """This rank's tokens in one MoE layer of one step: units and logical experts ``[S, K]``
    (torch, on the device) and, under static gating, which assignments keep a slot."""

    units: torch.Tensor
    logical: torch.Tensor
    kept: torch.Tensor | None


@dataclass
class MoeAccount:
    """What one layer did on this rank: assignments kept and padding slots it sent, real
    tokens its experts received, bytes it sent to each rank (counts, dispatch and combine)."""

    processed: int
    padded: int
    received: int
    sent_bytes_G: np.ndarray
    activation_bytes: int


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class MoeLayer:
    gate: torch.Tensor  # [D, E] router weights
    owner_U: np.ndarray  # GPU of each unit
    store: ExpertStore
    capacity_G: np.ndarray | None
    einsum: bool
    gpus: int = 1
    shared: list | None = None  # FfnWeights of shared experts

    def __post_init__(self) -> None:
        device = self.gate.device
        self.units = self.owner_U.size
        self.owner = torch.as_tensor(self.owner_U, device=device)
        self.by_owner = torch.as_tensor(np.argsort(self.owner_U, kind="stable"), device=device)
        self.units_per_gpu = np.bincount(self.owner_U, minlength=self.gpus).tolist()

    def __call__(
        self,
        x: torch.Tensor,
        route: LayerRoute,
        comm: Comm,
        timer: PhaseTimer,
        counters: CacheCounters,
    ) -> tuple[torch.Tensor, MoeAccount]:
        """The layer's output and what it did (counts only: no tensor outlives the layer)."""
        with timer.phase("gate"):
            probs = torch.softmax((x @ self.gate).float(), dim=-1)
            torch.topk(probs, route.units.shape[1], dim=-1)  # replaced by the replayed routing
            weights = probs.gather(1, route.logical).to(x.dtype)
        if self.capacity_G is None:
            y, account = self._dynamic(x, route, weights, comm, timer, counters)
        else:
            y, account = self._static(x, route, weights, comm, timer, counters)
        if self.shared:
            with timer.phase("expert"):
                for w in self.shared:
                    y = y + ffn(x, w)
        with timer.phase("gate"):
            return x + y, account

    def _dynamic(self, x, route, weights, comm, timer, counters):
        tokens, top_k = route.units.shape
        mine = self.units_per_gpu[comm.rank]
        with timer.phase("gate"):
            flat = route.units.reshape(-1)
            dest = self.owner[flat]
            order = torch.argsort(dest * self.units + flat, stable=True)
            token = order // top_k
            counts = torch.bincount(flat, minlength=self.units)[self.by_owner].to(torch.int32)
            send = x[token]
        with timer.phase("alltoall"):  # an int32 per expert, as the simulator counts
            received_GU = comm.alltoall(counts, self.units_per_gpu, [mine] * comm.world)
        with timer.phase("gate"):
            received_GU = received_GU.view(comm.world, mine)
            in_splits = torch.bincount(dest, minlength=comm.world).tolist()
            out_splits = received_GU.sum(dim=1).tolist()
        with timer.phase("alltoall"):
            rows = comm.alltoall(send, in_splits, out_splits)
        with timer.phase("gate"):  # rows arrive by source; experts take them by expert
            sizes = received_GU.sum(dim=0).tolist()
            unit_of_row = torch.repeat_interleave(
                torch.arange(mine, device=x.device).repeat(comm.world), received_GU.reshape(-1)
            )
            perm = torch.argsort(unit_of_row, stable=True)
            grouped = list(rows[perm].split(sizes))
        outputs = self.store.run(grouped, sizes, timer, counters)
        with timer.phase("gate"):
            out = torch.empty_like(rows)
            if outputs:
                out[perm] = torch.cat(outputs)
        with timer.phase("alltoall"):
            back = comm.alltoall(out, out_splits, in_splits)
        with timer.phase("gate"):
            y = torch.zeros_like(x)
            y.index_add_(0, token, back * weights.reshape(-1)[order, None])

        row_bytes = float(x.shape[1] * x.element_size())
        sent = (np.asarray(in_splits) + np.asarray(out_splits)) * row_bytes
        sent += counts.element_size() * np.asarray(self.units_per_gpu)
        account = MoeAccount(
            processed=tokens * top_k,
            padded=0,
            received=sum(sizes),
            sent_bytes_G=sent,
            activation_bytes=_nbytes(x, weights, send, rows, out, back, *outputs[:1]),
        )
        return y, account

    def _slots(self, route: LayerRoute) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept assignments (token, choice) and their slot in their unit: first by choice,
        then by token, as the static policy's ``kept`` orders them."""
        tokens, top_k = route.units.shape
        kept_T = route.kept.t().reshape(-1)  # choice-major
        index = torch.nonzero(kept_T).squeeze(1)
        unit = route.units.t().reshape(-1)[index]
        order = torch.argsort(unit * (tokens * top_k) + index, stable=True)
        counts = torch.bincount(unit, minlength=self.units)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(index)
        slot[order] = torch.arange(index.numel(), device=index.device) - starts[unit[order]]
        return index % tokens, index // tokens, slot

    def _static(self, x, route, weights, comm, timer, counters):
        tokens, d = x.shape
        capacity = self.capacity_G.tolist()
        c = capacity[comm.rank]
        mine = self.units_per_gpu[comm.rank]
        in_splits = [n * c for n in self.units_per_gpu]
        out_splits = [mine * cap for cap in capacity]
        with timer.phase("gate"):
            token, choice, slot = self._slots(route)
            unit = route.units[token, choice]
            if self.einsum:
                combine = torch.zeros((tokens, self.units, c), dtype=torch.float32, device=x.device)
                combine[token, unit, slot] = weights[token, choice].float()
                mask = torch.zeros(combine.shape, dtype=x.dtype, device=x.device)
                mask[token, unit, slot] = 1  # not combine != 0: a weight may round to zero
                dispatched = torch.einsum("suc,sd->ucd", mask, x)
            else:
                dispatched = x.new_zeros((self.units, c, d))
                dispatched[unit, slot] = x[token]
            send = dispatched[self.by_owner].reshape(-1, d)
        with timer.phase("alltoall"):
            rows = comm.alltoall(send, in_splits, out_splits)
        with timer.phase("gate"):  # rows arrive by source; experts take them by expert
            parts = [
                p.view(mine, cap, d)
                for p, cap in zip(rows.split(out_splits), capacity, strict=True)
            ]
            grouped = [torch.cat([p[j] for p in parts]) for j in range(mine)]
        # which experts have tokens: padding rows are all zero (a buffered layer needs it to
        # choose its requests; otherwise it is only counted, a small cost in the step)
        real = [int(torch.count_nonzero(g.abs().sum(dim=1))) for g in grouped]
        outputs = self.store.run(grouped, real, timer, counters)
        with timer.phase("gate"):
            edges = np.cumsum([0, *capacity])
            out = torch.cat(
                [
                    torch.stack([o[edges[g] : edges[g + 1]] for o in outputs]).reshape(-1, d)
                    if mine
                    else rows.new_zeros((0, d))
                    for g in range(comm.world)
                ]
            )
        with timer.phase("alltoall"):
            back = comm.alltoall(out, out_splits, in_splits).view(self.units, c, d)
        with timer.phase("gate"):
            expert_out = torch.empty_like(back)
            expert_out[self.by_owner] = back
            if self.einsum:
                y = torch.einsum("suc,ucd->sd", combine.to(x.dtype), expert_out)
            else:
                y = torch.zeros_like(x)
                y.index_add_(0, token, expert_out[unit, slot] * weights[token, choice, None])

        tensors = [x, weights, send, rows, out, back, expert_out]
        if self.einsum:
            tensors += [combine, mask]
        account = MoeAccount(
            processed=int(token.numel()),
            padded=self.units * c - int(token.numel()),
            received=sum(real),
            sent_bytes_G=(np.asarray(in_splits) + np.asarray(out_splits))
            * float(d * x.element_size()),
            activation_bytes=_nbytes(*tensors),
        )
        return y, account
