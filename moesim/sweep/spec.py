"""A sweep file and the points it expands to.

```yaml
base: scenarios/paper-lm.yaml          # relative to the sweep file
grid:                                  # every combination (product), in the order written
  workload.batch_size: [8, 16, 32]
  policies.gating: [{name: static, capacity_factor: 1.0}, {name: dynamic}]
zip:                                   # lists of one length, taken together
  cluster.nodes: [1, 2, 4]
  workload.batch_size: [64, 128, 256]
random:                                # n points drawn with a seed
  n: 20
  seed: 0
  params:
    workload.routing.skew: {uniform: [0.0, 2.0]}
    policies.cache.slots_per_layer: {randint: [1, 16]}
    cluster.device: {choice: [a100-sxm4-80gb, h100-sxm5-80gb]}
```

Sections combine as a product: every grid combination with every zip row with every random
draw. A point is the list of ``(dotted path, value)`` overrides applied to the base scenario.
The points are counted before they are expanded (at most ``MAX_POINTS``); the file is at most
``MAX_YAML_BYTES`` long, and ``read_yaml`` refuses one whose aliases expand without bound.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moesim.config import read_yaml
from moesim.errors import ConfigError

__all__ = ["MAX_POINTS", "MAX_YAML_BYTES", "LoadedSweep", "Point", "SweepSpec", "load_sweep"]

# A sweep keeps a file per point in its store and validates every point up front (a few
# milliseconds each): 100,000 points are about ten minutes of validation before the first run.
MAX_POINTS = 100_000
MAX_YAML_BYTES = 1 << 20  # a sweep file is a few lines; a megabyte is already a generated one
INT64 = (-(2**63), 2**63 - 1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Strict):
    """One of: ``choice`` (a list), ``uniform`` / ``loguniform`` ([low, high]),
    ``randint`` ([low, high], both included)."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, randint")
        for name in ("uniform", "loguniform"):
            bounds = getattr(self, name)
            if bounds and not all(math.isfinite(b) for b in bounds):
                raise ValueError(f"{name}: bounds must be finite numbers, got {list(bounds)}")
            if name == "uniform" and bounds and not math.isfinite(bounds[1] - bounds[0]):
                raise ValueError(f"uniform: the range {list(bounds)} is too wide to draw from")
        if self.loguniform and min(self.loguniform) <= 0:
            raise ValueError("loguniform bounds must be positive")
        if self.randint and not all(INT64[0] <= b < INT64[1] for b in self.randint):
            raise ValueError(f"randint: bounds must be 64-bit integers, got {list(self.randint)}")
        for name in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, name)
            if bounds and bounds[0] > bounds[1]:
                raise ValueError(f"{name}: low must not exceed high")
        return self

    def draw(self, rng: np.random.Generator) -> Any:
        if self.choice is not None:
            return self.choice[int(rng.integers(len(self.choice)))]
        if self.uniform is not None:
            return float(rng.uniform(*self.uniform))
        if self.loguniform is not None:
            low, high = np.log(self.loguniform)
            return float(np.exp(rng.uniform(low, high)))
        low, high = self.randint
        return int(rng.integers(low, high + 1))


class RandomSection(_Strict):
    n: int = Field(ge=1, le=MAX_POINTS)
    seed: int = Field(default=0, ge=0)
    params: dict[str, Distribution] = Field(min_length=1)


class SweepSpec(_Strict):
    base: str
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict)
    random: RandomSection | None = None

    @model_validator(mode="after")
    def _shapes(self) -> SweepSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: empty list")
        lengths = {len(values) for values in self.zip.values()}
        if len(lengths) > 1:
            raise ValueError(f"zip: lists of different lengths {sorted(lengths)}")
        if lengths == {0}:
            raise ValueError("zip: empty lists")
        return self

    def count(self) -> int:
        """The points the sections expand to, without expanding them."""
        grid = math.prod(len(values) for values in self.grid.values())
        rows = len(next(iter(self.zip.values()))) if self.zip else 1
        return grid * rows * (self.random.n if self.random else 1)


@dataclass(frozen=True)
class Point:
    """One scenario of the sweep: the overrides of the base, in order."""

    index: int
    params: tuple[tuple[str, Any], ...]

    @property
    def overrides(self) -> list[str]:
        """``KEY=VALUE`` strings for ``load_scenario``, values in YAML flow style (JSON would
        write ``1e-07``, which YAML reads back as a string)."""
        return [f"{key}={_flow_yaml(value)}" for key, value in self.params]

    def describe(self) -> str:
        return ", ".join(f"{key}={json.dumps(value)}" for key, value in self.params)


def _flow_yaml(value: Any) -> str:
    """``value`` as one line of YAML that reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=float("inf"))
    text = text.strip()
    return text.removesuffix("...").strip()


def _expand(spec: SweepSpec) -> list[tuple[tuple[str, Any], ...]]:
    grid = [
        tuple(zip(spec.grid, combination, strict=True))
        for combination in itertools.product(*spec.grid.values())
    ]
    rows = (
        [tuple(zip(spec.zip, row, strict=True)) for row in zip(*spec.zip.values(), strict=True)]
        if spec.zip
        else [()]
    )
    draws: list[tuple[tuple[str, Any], ...]] = [()]
    if spec.random is not None:
        rng = np.random.default_rng(spec.random.seed)
        draws = [
            tuple((key, dist.draw(rng)) for key, dist in spec.random.params.items())
            for _ in range(spec.random.n)
        ]
    return [g + r + d for g in grid for r in rows for d in draws]


@dataclass(frozen=True)
class LoadedSweep:
    spec: SweepSpec
    path: Path
    base: Path
    points: list[Point]


def load_sweep(path: str | Path) -> LoadedSweep:
    """Read, count and expand a sweep file; errors name the file and the field."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(
            str(path), None, f"larger than {MAX_YAML_BYTES:,} bytes: not a sweep file"
        )
    data = read_yaml(path)  # refuses duplicate keys, deep nesting and alias bombs
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(str(path), field, message) from None
    count = spec.count()
    if count > MAX_POINTS:
        raise ConfigError(
            str(path), None, f"expands to {count:,} points; a sweep runs at most {MAX_POINTS:,}"
        )
    base = Path(spec.base)
    if not base.is_absolute():
        base = path.resolve().parent / base if (path.parent / base).exists() else base
    if not base.is_file():
        raise ConfigError(str(path), "base", f"no scenario file {spec.base}")
    points = [Point(i, params) for i, params in enumerate(_expand(spec))]
    return LoadedSweep(spec, path, base, points)
