"""Expert placement plans: which GPU holds each expert of each MoE layer.

For now the one plan is ``contiguous`` (expert ``e`` on GPU ``e * G // E``), the layout of
expert-parallel MoE layers in fairseq, DeepSpeed and Megatron.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["PlacementPlan", "contiguous_plan"]


@dataclass(frozen=True)
class PlacementPlan:
    """``owner_LE[l, e]``: the GPU that holds expert ``e`` of MoE layer ``l``."""

    owner_LE: np.ndarray
    gpus: int

    @property
    def experts_per_gpu_LG(self) -> np.ndarray:
        layers = self.owner_LE.shape[0]
        flat = (np.arange(layers)[:, None] * self.gpus + self.owner_LE).ravel()
        return np.bincount(flat, minlength=layers * self.gpus).reshape(layers, self.gpus)

    @cached_property
    def _blocked(self) -> bool:
        """Every GPU holds the same number of experts, in ascending id order (contiguous)."""
        _layers, experts = self.owner_LE.shape
        if experts % self.gpus:
            return False
        block = np.repeat(np.arange(self.gpus), experts // self.gpus)
        return bool((self.owner_LE == block).all())

    def per_gpu_sum(self, values_NLE: np.ndarray) -> np.ndarray:
        """``values_NLG``: the sum over each GPU's experts."""
        n, layers, experts = values_NLE.shape
        if self._blocked:
            return values_NLE.reshape(n, layers, self.gpus, experts // self.gpus).sum(axis=-1)
        keys = np.arange(n * layers).reshape(n, layers, 1) * self.gpus + self.owner_LE[None]
        summed = np.bincount(
            keys.ravel(), weights=values_NLE.ravel(), minlength=n * layers * self.gpus
        )
        return summed.reshape(n, layers, self.gpus).astype(values_NLE.dtype)

    def per_gpu_max(self, values_NLE: np.ndarray) -> np.ndarray:
        """``values_NLG``: the largest value among each GPU's experts (0 where it has none)."""
        n, layers, experts = values_NLE.shape
        if self._blocked:
            return values_NLE.reshape(n, layers, self.gpus, experts // self.gpus).max(
                axis=-1, initial=0
            )
        out = np.zeros((n, layers, self.gpus), dtype=values_NLE.dtype)
        index = np.broadcast_to(self.owner_LE[None], values_NLE.shape)
        np.maximum.at(out, (*np.indices(values_NLE.shape)[:2], index), values_NLE)
        return out


def contiguous_plan(num_experts: int, gpus: int, layers: int) -> PlacementPlan:
    """Expert ``e`` on GPU ``e * gpus // num_experts`` in every layer."""
    owner_E = np.arange(num_experts, dtype=np.int64) * gpus // max(num_experts, 1)
    return PlacementPlan(np.broadcast_to(owner_E, (layers, num_experts)).copy(), gpus)
