"""Annotated pydantic field types that accept unit strings and store plain SI floats."""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from moesim.units import Quantity, parse_quantity

__all__ = [
    "Bytes",
    "BytesPerSecond",
    "Efficiency",
    "FlopsPerSecond",
    "Frozen",
    "Provenance",
    "Seconds",
]


def _unit(kind: Quantity) -> BeforeValidator:
    return BeforeValidator(lambda value: parse_quantity(value, kind))


Bytes = Annotated[float, _unit("bytes"), Field(ge=0)]
BytesPerSecond = Annotated[float, _unit("bytes_per_s"), Field(gt=0)]
FlopsPerSecond = Annotated[float, _unit("flops_per_s"), Field(gt=0)]
Seconds = Annotated[float, _unit("seconds"), Field(ge=0)]
Efficiency = Annotated[float, Field(gt=0, le=1)]


class Frozen(BaseModel):
    """Base of every config model: immutable, unknown keys and non-finite numbers rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Provenance(Frozen):
    """Where a group of figures came from: a datasheet, a calibration run, or an assumption."""

    source: Literal["datasheet", "calibrated", "assumption"]
    ref: str = Field(min_length=1, description="document, URL or calibration run")
    date: datetime.date | str | None = None  # YAML reads 2026-11-24 as a date
    measured_on: str | None = None
    software: dict[str, str] | None = None  # calibration: versions of what ran the benchmarks
