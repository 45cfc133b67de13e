"""Per-model operator tables of a calibrated profile (``compute.models``).

``moesim calibrate --model CARD`` times the operators of one model card as the reference
executor runs them, over a grid of token counts, and writes one ``ModelTables`` per card. The
cost model uses a card's tables for a scenario whose model has the same name and
``ModelShapes``, the generic GEMM grid and roofline elsewhere (``hardware.model_tables``).
Every table holds seconds of one call, measured: curves by one size, grids by two
(``seconds[i_row][i_column]``, rows the second axis named).
"""

from __future__ import annotations

import itertools

from pydantic import Field, model_validator

from moesim.config.fields import Frozen, Provenance, Seconds
from moesim.config.model import ModelSpec

__all__ = [
    "AttentionDecodeGrid",
    "AttentionPrefillGrid",
    "ModelShapes",
    "ModelTables",
    "RowsCurve",
    "StaticGateGrid",
    "TokensCurve",
]

_TwoOrMore = Field(min_length=2)


def _axis(values: list[float], name: str) -> None:
    if values[0] <= 0 or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{name} must be positive and strictly ascending")


def _curve(points: list[float], seconds: list[float], name: str) -> None:
    _axis(points, name)
    if len(seconds) != len(points):
        raise ValueError(f"seconds must have one entry per value of {name}")
    if any(s <= 0 for s in seconds):
        raise ValueError("seconds must be positive")


def _grid(columns: list[float], rows: list[float], seconds: list[list[float]], names: str) -> None:
    column, row = names.split()
    _axis(columns, column)
    _axis(rows, row)
    if len(seconds) != len(rows) or any(len(r) != len(columns) for r in seconds):
        raise ValueError(
            f"seconds must be a [{row}][{column}] = [{len(rows)}][{len(columns)}] list"
        )
    if any(s <= 0 for r in seconds for s in r):
        raise ValueError("seconds must be positive")


class TokensCurve(Frozen):
    """Seconds of one call over ``tokens`` rows."""

    tokens: list[float] = _TwoOrMore
    seconds: list[float]

    @model_validator(mode="after")
    def _shape(self) -> TokensCurve:
        _curve(self.tokens, self.seconds, "tokens")
        return self


class RowsCurve(Frozen):
    """Seconds of one expert's FFN over ``rows`` rows, in the executor's loop over experts."""

    rows: list[float] = _TwoOrMore
    seconds: list[float]

    @model_validator(mode="after")
    def _shape(self) -> RowsCurve:
        _curve(self.rows, self.seconds, "rows")
        return self


class AttentionDecodeGrid(Frozen):
    """Seconds of one attention block decoding ``tokens`` sequences over ``context``
    positions each: ``seconds[i_context][i_tokens]``."""

    tokens: list[float] = _TwoOrMore
    context: list[float] = _TwoOrMore
    seconds: list[list[float]]

    @model_validator(mode="after")
    def _shape(self) -> AttentionDecodeGrid:
        _grid(self.tokens, self.context, self.seconds, "tokens context")
        return self


class AttentionPrefillGrid(Frozen):
    """Seconds of one attention block prefilling ``sequences`` whole causal prompts of
    ``seq_len`` tokens each: ``seconds[i_seq_len][i_sequences]``."""

    sequences: list[float] = _TwoOrMore
    seq_len: list[float] = _TwoOrMore
    seconds: list[list[float]]

    @model_validator(mode="after")
    def _shape(self) -> AttentionPrefillGrid:
        _grid(self.sequences, self.seq_len, self.seconds, "sequences seq_len")
        return self


class StaticGateGrid(Frozen):
    """Seconds of a static-gating MoE layer's gate phase over ``tokens`` local tokens with
    ``capacity_factor`` (slots ``C = capacity_factor x tokens x top_k / experts`` per
    expert): ``seconds[i_capacity_factor][i_tokens]``."""

    tokens: list[float] = _TwoOrMore
    capacity_factor: list[float] = _TwoOrMore
    seconds: list[list[float]]

    @model_validator(mode="after")
    def _shape(self) -> StaticGateGrid:
        _grid(self.tokens, self.capacity_factor, self.seconds, "tokens capacity_factor")
        return self


class ModelShapes(Frozen):
    """What a table's cost depends on besides the token counts; tables apply to a model only
    if all of these match."""

    d_model: int = Field(ge=1)
    d_ffn: int = Field(ge=1)
    dense_d_ffn: int | None = Field(default=None, ge=1)
    ffn_type: str
    num_experts: int = Field(ge=0)
    top_k: int = Field(ge=1)
    shared_experts: int = Field(ge=0)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    dtype: str

    @classmethod
    def of(cls, model: ModelSpec) -> ModelShapes:
        return cls(
            d_model=model.d_model,
            d_ffn=model.d_ffn,
            dense_d_ffn=model.dense_d_ffn,
            ffn_type=model.ffn_type,
            num_experts=model.num_experts,
            top_k=model.top_k,
            shared_experts=model.shared_experts,
            heads=model.heads,
            kv_heads=model.kv_heads or model.heads,
            head_dim=model.head_dim or model.d_model // model.heads,
            vocab_size=model.vocab_size,
            dtype=model.dtype,
        )


class ModelTables(Frozen):
    """One model card's operators, each per call on one rank, as the reference executor runs
    them (phases as its timer splits them): attention blocks, the gate phase of an MoE layer
    (router, top-k, reorders, gathers, scatter-add, residual) by gating, the local part of its
    all-to-alls on one rank (``alltoall_*``: count exchange, dispatch and combine together),
    one expert by rows, an FFN of ``d_ffn`` (shared experts; dense layers unless
    ``dense_d_ffn``), the LM head by positions, the untimed rest of a block (``glue``), and one
    expert's copy into its device slot."""

    model: str = Field(min_length=1)
    shapes: ModelShapes
    attention_decode: AttentionDecodeGrid
    attention_prefill: AttentionPrefillGrid
    gate_dynamic: TokensCurve
    gate_static: StaticGateGrid
    gate_einsum: StaticGateGrid
    alltoall_dynamic: TokensCurve
    alltoall_static: TokensCurve
    expert: RowsCurve
    ffn: TokensCurve
    dense_ffn: TokensCurve | None = None
    lm_head: TokensCurve
    glue: TokensCurve
    expert_copy: Seconds
    provenance: Provenance

    def applies_to(self, model: ModelSpec) -> bool:
        """Whether these tables were measured for ``model`` (same name and shapes)."""
        return self.model == model.name and self.shapes == ModelShapes.of(model)
