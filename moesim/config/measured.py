"""Measured tables in a calibrated hardware profile: GEMM times and transfer curves.

``moesim calibrate`` writes them; the cost model interpolates them where present and falls back
to the roofline of the datasheet figures elsewhere (``hardware.tables``).
"""

from __future__ import annotations

import itertools

from pydantic import Field, model_validator

from moesim.config.fields import Frozen

__all__ = ["AttentionCurves", "GemmTable", "MeasuredCurve"]

_Positive = Field(min_length=1)


def _ascending(values: list, name: str) -> None:
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{name} must be strictly ascending")
    if values[0] <= 0:
        raise ValueError(f"{name} must be positive")


class GemmTable(Frozen):
    """Seconds of an ``(m x k) @ (k x n)`` matmul in ``dtype``, launch included, indexed
    ``seconds[i_k][i_n][i_m]`` over ascending grids ``m`` (token rows), ``k`` and ``n``."""

    dtype: str
    m: list[int] = _Positive
    k: list[int] = _Positive
    n: list[int] = _Positive
    seconds: list[list[list[float]]]

    @model_validator(mode="after")
    def _shape(self) -> GemmTable:
        for name in ("m", "k", "n"):
            _ascending(getattr(self, name), name)
        shape = (len(self.k), len(self.n), len(self.m))
        rows = [len(self.seconds)] + [len(r) for r in self.seconds]
        cells = [len(c) for r in self.seconds for c in r]
        if rows != [shape[0]] + [shape[1]] * shape[0] or set(cells) != {shape[2]}:
            raise ValueError(f"seconds must be a [k][n][m] = {list(shape)} nested list")
        if any(s <= 0 for r in self.seconds for c in r for s in c):
            raise ValueError("seconds must be positive")
        return self


class MeasuredCurve(Frozen):
    """Seconds measured for transfers of ascending sizes ``bytes`` (latency included)."""

    bytes: list[float] = _Positive
    seconds: list[float] = _Positive

    @model_validator(mode="after")
    def _shape(self) -> MeasuredCurve:
        _ascending(self.bytes, "bytes")
        if len(self.seconds) != len(self.bytes):
            raise ValueError("seconds must have one entry per size in bytes")
        if any(s <= 0 for s in self.seconds):
            raise ValueError("seconds must be positive")
        return self


class AttentionCurves(Frozen):
    """Measured seconds of the attention core (scaled-dot-product attention) in ``dtype`` with
    heads of ``head_dim``: decode (one query per sequence) by the K/V bytes it reads, causal
    prefill by its FLOPs (``4 x tokens x mean context x query width``)."""

    dtype: str
    head_dim: int = Field(ge=1)
    decode_kv_bytes: list[float] = _Positive
    decode_seconds: list[float] = _Positive
    prefill_flops: list[float] = _Positive
    prefill_seconds: list[float] = _Positive

    @model_validator(mode="after")
    def _shape(self) -> AttentionCurves:
        for x, y in (("decode_kv_bytes", "decode_seconds"), ("prefill_flops", "prefill_seconds")):
            _ascending(getattr(self, x), x)
            if len(getattr(self, y)) != len(getattr(self, x)):
                raise ValueError(f"{y} must have one entry per value of {x}")
            if any(s <= 0 for s in getattr(self, y)):
                raise ValueError(f"{y} must be positive")
        return self
