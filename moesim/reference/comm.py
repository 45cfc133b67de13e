"""Collectives between the ranks of a reference run; a world of one rank talks to itself."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["Comm"]


class Comm:
    """``all_to_all_single`` with explicit splits, barriers and rank 0's values shared, over the
    default group."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank = rank
        self.world = world

    def alltoall(self, send: torch.Tensor, in_splits: list[int], out_splits: list[int]):
        """Rows ``send`` split by destination (``in_splits``) → rows received by source."""
        if self.world == 1:
            return send
        recv = send.new_empty((sum(out_splits), *send.shape[1:]))
        dist.all_to_all_single(recv, send.contiguous(), out_splits, in_splits)
        return recv

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def share(self, values: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``values`` (non-negative) on every rank, once every rank has come: a
        barrier that carries them (an all-reduce of max, the others contributing zeros)."""
        if self.world > 1:
            if self.rank != 0:
                values.zero_()
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values
