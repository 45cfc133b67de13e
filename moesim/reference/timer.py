"""Per-phase wall time of one rank: ``time.perf_counter`` on CPU, where torch runs each op
before returning, and ``torch.cuda.Event`` pairs on a GPU, read after one synchronise."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from moesim.metrics import PHASES

__all__ = ["PhaseTimer"]


class PhaseTimer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            begin = time.perf_counter()
            yield
            self.totals[name] += time.perf_counter() - begin

    def collect(self) -> list[float]:
        """Seconds per phase (``PHASES`` order) since the last reset; resets."""
        if self.cuda:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self.totals[name] += start.elapsed_time(end) / 1e3
        seconds = [self.totals[name] for name in PHASES]
        self.reset()
        return seconds
