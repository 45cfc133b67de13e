"""Expert placement plans: which GPU holds each expert (and each replica) of each MoE layer.

A plan has ``U`` physical slots per layer (``U = E`` without replicas): ``phy2log_LU`` says which
logical expert a slot holds, ``owner_LU`` on which GPU it sits. With replicas, a token's
assignment to expert ``e`` goes to replica ``t % logcnt[e]`` (tokens split evenly). This is the
``phy2log`` / ``logcnt`` form of DeepSeek's EPLB, whose plans import and export as-is (slot
``u`` on GPU ``u // (U / G)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from moesim.errors import ConfigError

__all__ = ["PlacementPlan", "contiguous_plan", "load_eplb", "save_eplb"]


@dataclass(frozen=True)
class PlacementPlan:
    """``phy2log_LU[l, u]``: logical expert in slot ``u``; ``owner_LU[l, u]``: its GPU."""

    phy2log_LU: np.ndarray
    owner_LU: np.ndarray
    gpus: int
    num_experts: int

    @property
    def units(self) -> int:
        return self.phy2log_LU.shape[1]

    @property
    def layers(self) -> int:
        return self.phy2log_LU.shape[0]

    @cached_property
    def logcnt_LE(self) -> np.ndarray:
        """Replicas of each logical expert."""
        keys = (np.arange(self.layers)[:, None] * self.num_experts + self.phy2log_LU).ravel()
        counts = np.bincount(keys, minlength=self.layers * self.num_experts)
        return counts.reshape(self.layers, self.num_experts)

    @cached_property
    def log2phy_LER(self) -> np.ndarray:
        """Slots of each logical expert, padded with -1 (EPLB's ``log2phy``)."""
        replicas = int(self.logcnt_LE.max(initial=1))
        table = np.full((self.layers, self.num_experts, replicas), -1, dtype=np.int64)
        for layer in range(self.layers):
            order = np.argsort(self.phy2log_LU[layer], kind="stable")
            experts = self.phy2log_LU[layer][order]
            first = np.searchsorted(experts, experts)
            table[layer, experts, np.arange(order.size) - first] = order
        return table

    @cached_property
    def _identity(self) -> bool:
        return self.units == self.num_experts and bool(
            (self.phy2log_LU == np.arange(self.num_experts)).all()
        )

    def to_units(self, expert_ids_NLTK: np.ndarray) -> np.ndarray:
        """Map each token's logical experts to the physical slots that serve them."""
        if self._identity:
            return expert_ids_NLTK
        _, layers, tokens, _ = expert_ids_NLTK.shape
        replicas = self.log2phy_LER.shape[2]
        cell = (np.arange(layers)[:, None, None] * self.num_experts + expert_ids_NLTK) * replicas
        count = self.logcnt_LE.ravel()[cell // replicas]
        replica = np.arange(tokens)[:, None] % count
        return self.log2phy_LER.ravel()[cell + replica]

    @cached_property
    def replica_LU(self) -> np.ndarray:
        """Which copy of its expert each slot holds (0 for the first)."""
        replica_LU = np.zeros(self.phy2log_LU.shape, dtype=np.int64)
        for layer in range(self.layers):
            order = np.argsort(self.phy2log_LU[layer], kind="stable")
            experts = self.phy2log_LU[layer][order]
            replica_LU[layer, order] = np.arange(order.size) - np.searchsorted(experts, experts)
        return replica_LU

    def to_unit_counts(self, counts_NLGE: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``counts_NLGU``: count-level routing in placement slots. An expert's tokens split
        over its replicas as ``t % replicas`` splits them at token level: each token to a
        replica uniformly, so a multinomial with equal shares."""
        if self._identity:
            return counts_NLGE
        n, layers, gpus, _ = counts_NLGE.shape
        expert_index = np.broadcast_to(
            self.phy2log_LU[None, :, None, :], (n, layers, gpus, self.units)
        )
        gathered = np.take_along_axis(counts_NLGE, expert_index, axis=-1).astype(np.int64)
        if self.units == self.num_experts:
            return gathered
        left = gathered.copy()  # per slot: its expert's tokens not yet given to a replica
        out = np.zeros_like(gathered)
        copies_LU = np.take_along_axis(self.logcnt_LE, self.phy2log_LU, axis=1)
        rows = np.arange(n * layers * gpus).reshape(n, layers, gpus, 1) * self.num_experts
        key_NLGU = (rows + expert_index).ravel()
        for replica in range(int(copies_LU.max())):
            mine_LU = self.replica_LU == replica
            share = np.where(mine_LU, 1.0 / np.maximum(copies_LU - replica, 1), 0.0)
            drawn = rng.binomial(np.where(mine_LU[None, :, None], left, 0), share[None, :, None])
            out += drawn
            given = np.bincount(key_NLGU, weights=drawn.ravel(), minlength=counts_NLGE.size)
            left -= given.astype(np.int64)[key_NLGU].reshape(left.shape)
        return out

    @property
    def experts_per_gpu_LG(self) -> np.ndarray:
        """Slots (experts and replicas) each GPU holds per layer."""
        flat = (np.arange(self.layers)[:, None] * self.gpus + self.owner_LU).ravel()
        return np.bincount(flat, minlength=self.layers * self.gpus).reshape(self.layers, self.gpus)

    @cached_property
    def blocked(self) -> bool:
        """Every GPU holds the same number of slots, in ascending order (a reshape suffices)."""
        if self.units % self.gpus or not self.units:
            return False
        block = np.repeat(np.arange(self.gpus), self.units // self.gpus)
        return bool((self.owner_LU == block).all())

    def per_gpu_sum(self, values_NLXU: np.ndarray) -> np.ndarray:
        """``values_NLXG``: the sum over each GPU's slots (any axes ``X`` between the layer's
        and the slots', such as the source GPU of count-level routing)."""
        shape = values_NLXU.shape
        units = shape[-1]
        if self.blocked:
            return _block_reduce(values_NLXU, units // self.gpus, np.add)
        owner = self.owner_LU.reshape(1, shape[1], *([1] * (len(shape) - 3)), units)
        rows = np.arange(int(np.prod(shape[:-1]))).reshape((*shape[:-1], 1)) * self.gpus
        keys = (rows + owner).ravel()
        summed = np.bincount(keys, weights=values_NLXU.ravel(), minlength=rows.size * self.gpus)
        return summed.reshape(*shape[:-1], self.gpus).astype(values_NLXU.dtype)

    def per_gpu_max(self, values_NLU: np.ndarray) -> np.ndarray:
        """``values_NLG``: the largest value among each GPU's slots (0 where it has none)."""
        n, layers, units = values_NLU.shape
        if self.blocked:
            return _block_reduce(values_NLU, units // self.gpus, np.maximum)
        out = np.zeros((n, layers, self.gpus), dtype=values_NLU.dtype)
        index = np.broadcast_to(self.owner_LU[None], values_NLU.shape)
        np.maximum.at(out, (*np.indices(values_NLU.shape)[:2], index), values_NLU)
        return out


_STRIDED_BLOCK = 16  # up to this block size, a pass per position beats numpy's inner reduction


def _block_reduce(values_XU: np.ndarray, block: int, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc`` over consecutive blocks of ``block`` slots: ``out_XG``. numpy reduces a short
    last axis element by element; for small blocks, one strided pass per position in the block
    is several times faster."""
    if block > _STRIDED_BLOCK:
        shape = values_XU.shape
        return ufunc.reduce(values_XU.reshape(*shape[:-1], -1, block), axis=-1)
    out = values_XU[..., ::block].copy()
    for position in range(1, block):
        ufunc(out, values_XU[..., position::block], out=out)
    return out


def contiguous_plan(num_experts: int, gpus: int, layers: int) -> PlacementPlan:
    """Expert ``e`` on GPU ``e * gpus // num_experts`` in every layer."""
    owner_E = np.arange(num_experts, dtype=np.int64) * gpus // max(num_experts, 1)
    phy2log = np.broadcast_to(np.arange(num_experts), (layers, num_experts)).copy()
    return PlacementPlan(
        phy2log, np.broadcast_to(owner_E, (layers, num_experts)).copy(), gpus, num_experts
    )


def save_eplb(path: str | Path, plan: PlacementPlan) -> None:
    """Write ``phy2log``, ``log2phy`` and ``logcnt`` (EPLB's arrays) to an ``.npz``; slots are
    ordered by GPU first, so the plan needs the same number of slots on every GPU."""
    if plan.units % plan.gpus or (plan.experts_per_gpu_LG != plan.units // plan.gpus).any():
        raise ValueError("the EPLB form needs the same number of slots on every GPU")
    order = np.argsort(plan.owner_LU, axis=1, kind="stable")
    phy2log = np.take_along_axis(plan.phy2log_LU, order, axis=1)
    owner = np.take_along_axis(plan.owner_LU, order, axis=1)
    ordered = PlacementPlan(phy2log, owner, plan.gpus, plan.num_experts)
    np.savez(path, phy2log=phy2log, log2phy=ordered.log2phy_LER, logcnt=ordered.logcnt_LE)


def load_eplb(path: str | Path, gpus: int, num_experts: int, layers: int) -> PlacementPlan:
    """A plan from an EPLB ``phy2log [layers, slots]`` array in an ``.npz`` file."""
    file = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            phy2log = np.asarray(archive["phy2log"])
    except (OSError, KeyError, ValueError) as error:
        raise ConfigError(file, "phy2log", f"cannot read an EPLB plan: {error}") from None
    if not np.issubdtype(phy2log.dtype, np.integer) or phy2log.size == 0:
        raise ConfigError(
            file, "phy2log", f"expected a non-empty integer array, got {phy2log.dtype}"
        )
    if phy2log.ndim != 2 or phy2log.shape[0] != layers:
        raise ConfigError(
            file, "phy2log", f"expected shape [{layers} layers, slots], got {phy2log.shape}"
        )
    units = phy2log.shape[1]
    if units % gpus:
        raise ConfigError(file, "phy2log", f"{units} slots do not split evenly over {gpus} GPUs")
    if phy2log.min() < 0 or phy2log.max() >= num_experts:
        raise ConfigError(file, "phy2log", f"expert ids must lie in [0, {num_experts - 1}]")
    missing = [layer for layer in range(layers) if np.unique(phy2log[layer]).size < num_experts]
    if missing:
        raise ConfigError(file, "phy2log", f"layer {missing[0]} leaves some expert without a slot")
    owner = np.broadcast_to(np.arange(units) // (units // gpus), phy2log.shape).copy()
    return PlacementPlan(phy2log.astype(np.int64), owner, gpus, num_experts)
