"""An advise spec: the base serving scenario, the latency targets, the objective, the prices and
the search space, validated up front; every error names the spec file and the field.

```yaml
base: ../serving-continuous.yaml          # a serving scenario, relative to the spec
slo: {ttft_s: 2.0, tpot_s: 0.2, percentile: 99}   # default: the base's slo
objective: {rate: 40.0}                   # or {maximize: goodput_per_dollar}
prices: {h100-sxm5-80gb: 2.5, h200-sxm-141gb: 3.5}  # $ per GPU-hour, per device profile name
search:                                   # every combination of these dotted keys
  cluster.device: [h100-sxm5-80gb, h200-sxm-141gb]
  cluster.nodes: [1, 2]
evaluate: {duration_s: 60, rate_tolerance: 0.05, margin: 0.25, runners_up: 3}   # optional
```
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moesim.advise.disaggregation import KEY as DISAGGREGATION
from moesim.advise.disaggregation import expand
from moesim.config import Scenario, SloSpec, load_scenario, read_yaml
from moesim.errors import ConfigError
from moesim.sweep import Point

__all__ = [
    "MAX_CONFIGURATIONS",
    "AdviseSpec",
    "Evaluate",
    "LoadedAdvice",
    "load_advise_spec",
    "override",
    "point_overrides",
]

# Each configuration is screened (a few fixed-batch steps) and has a row in candidates.parquet;
# ten thousand is hours of screening on a laptop.
MAX_CONFIGURATIONS = 10_000
_UNKNOWN = ("unknown key", "Extra inputs are not permitted")
# Keys advise sets itself: the traffic is the base's, the rate and targets are the spec's.
_OWN_KEYS = {
    "workload.requests": "the traffic is the base's; advise sets the arrival rate itself",
    "workload.phase": "advise searches serving deployments",
    "slo": "the targets are the spec's slo",
}


def override(key: str, value: Any) -> str:
    """``KEY=VALUE`` for ``load_scenario``, the value as flow YAML (JSON writes ``1e-07``,
    which YAML reads as a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return f"{key}={text.removesuffix(chr(10) + '...' + chr(10)).rstrip(chr(10))}"


def point_overrides(point: Point) -> list[str]:
    """A configuration's overrides of the base, in the search's order (``disaggregation``
    becomes pools through ``disaggregation.resolve``, which needs the base)."""
    return [override(key, value) for key, value in point.params if key != DISAGGREGATION]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Strict):
    """``rate``: serve this many requests/s at the least cost (replicas of a configuration
    share the traffic); ``maximize: goodput_per_dollar``: the most requests within the SLO per
    dollar, at each configuration's capacity."""

    rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    maximize: Literal["goodput_per_dollar"] | None = None

    @model_validator(mode="after")
    def _one(self) -> Objective:
        if (self.rate is None) == (self.maximize is None):
            raise ValueError("give exactly one of rate (requests/s) or maximize")
        return self


class Evaluate(_Strict):
    """How candidates are evaluated: ``duration_s`` of traffic per serving simulation (a run
    at rate r serves r x duration_s requests: long enough for the queue to settle, which a
    fixed count is not at every rate), the relative width at which the capacity search stops,
    the screen's optimism (its latency targets and capacities are loosened by ``margin``
    before it drops anything) and the runners-up simulated besides the best."""

    duration_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    rate_tolerance: float = Field(default=0.05, gt=0, le=1)
    margin: float = Field(default=0.25, ge=0, le=10)
    runners_up: int = Field(default=3, ge=0, le=100)


class AdviseSpec(_Strict):
    base: str
    slo: dict[str, Any] | None = None
    objective: Objective
    prices: dict[str, float] = Field(min_length=1)
    search: dict[str, list[Any]]
    evaluate: Evaluate = Field(default_factory=Evaluate)


@dataclass(frozen=True)
class LoadedAdvice:
    """A validated spec: its file, the base scenario file and loaded scenario (with the spec's
    SLO), the SLO, and one ``Point`` per configuration of the search."""

    spec: AdviseSpec
    path: Path
    base: Path
    scenario: Scenario
    slo: SloSpec
    configurations: list[Point]

    @property
    def fixed(self) -> list[str]:
        """Overrides every candidate gets: the spec's SLO."""
        return [override("slo", self.slo.model_dump(mode="json"))]


def _first(error: ValidationError) -> tuple[str | None, str]:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required field is missing"
    return field, message


def _slo(spec: AdviseSpec, base: Scenario, file: str) -> SloSpec:
    if spec.slo is None:
        if base.slo is None:
            raise ConfigError(file, "slo", "required: the base scenario sets no slo either")
        return base.slo
    for key in spec.slo:
        if key not in SloSpec.model_fields:
            raise ConfigError(
                file,
                f"slo.{key}",
                "unknown metric: advise targets ttft_s and tpot_s (seconds) at a percentile",
            )
    try:
        return SloSpec.model_validate(spec.slo)
    except ValidationError as error:
        field, message = _first(error)
        raise ConfigError(file, ".".join(p for p in ("slo", field) if p), message) from None


def _check_key(file: str, base: Path, key: str, values: list[Any]) -> None:
    """A search key must name a field of the scenario (each value is tried on the base: an
    unknown key in it is the spec's error; any other refusal is the candidate's status)."""
    where = f"search.{key}"
    if key.startswith("cluster.pools"):
        raise ConfigError(file, where, "search disaggregation: [none, {prefill_fraction: [...]}]")
    if key == "disaggregation":
        return  # its values are checked as they expand
    for own, why in _OWN_KEYS.items():
        if key == own or key.startswith(own + "."):
            raise ConfigError(file, where, f"not searchable: {why}")
    if not values:
        raise ConfigError(file, where, "empty list: the search space is empty")
    for index, value in enumerate(values):
        try:
            load_scenario(base, [override(key, value)])
        except ConfigError as error:
            if error.message.startswith(_UNKNOWN):
                field = (error.field or key).removeprefix("--set ")
                raise ConfigError(
                    file, f"{where}[{index}]", f"unknown field {field} of the scenario"
                ) from None


def _devices(spec: AdviseSpec, base: Path, scenario: Scenario, file: str) -> None:
    """Every device the search can pick must have a price."""
    names = {scenario.cluster.device.name}
    if "cluster.device" in spec.search:
        names = set()
        for value in spec.search["cluster.device"]:
            try:
                loaded = load_scenario(base, [override("cluster.device", value)])
            except ConfigError:
                continue  # a device that does not load is that candidate's status
            names.add(loaded.cluster.device.name)
    for name in sorted(names):
        if name not in spec.prices:
            raise ConfigError(
                file,
                f"prices.{name}",
                "missing: every searched device needs a price ($ per GPU-hour)",
            )
        if not math.isfinite(spec.prices[name]) or spec.prices[name] <= 0:
            raise ConfigError(file, f"prices.{name}", "expected a positive price")


def load_advise_spec(path: str | Path) -> LoadedAdvice:
    """Read and validate an advise spec and expand its search into configurations."""
    path = Path(path)
    file = str(path)
    try:
        spec = AdviseSpec.model_validate(read_yaml(path))
    except ValidationError as error:
        field, message = _first(error)
        raise ConfigError(file, field, message) from None
    base = Path(spec.base)
    if not base.is_absolute() and (path.parent / base).exists():
        base = path.parent / base
    if not base.is_file():
        raise ConfigError(file, "base", f"no scenario file {spec.base}")
    if not spec.search:
        raise ConfigError(file, "search", "empty: the search space has no configuration")
    scenario = load_scenario(base)
    if scenario.workload.phase != "serving":
        raise ConfigError(file, "base", f"{spec.base} is not a serving scenario")
    if scenario.cluster.pools is not None:
        raise ConfigError(
            file,
            "base",
            f"{spec.base} has cluster.pools: give a colocated base and search "
            "disaggregation: [none, {prefill_fraction: [...]}]",
        )
    if scenario.workload.requests.arrival.process not in ("poisson", "gamma", "constant"):
        raise ConfigError(
            file, "base", "its arrival process must take a rate (poisson, gamma, constant)"
        )
    slo = _slo(spec, scenario, file)
    search = dict(spec.search)
    if DISAGGREGATION in search:
        search[DISAGGREGATION] = expand(search[DISAGGREGATION], file)
    spec = spec.model_copy(update={"search": search})
    for key, values in spec.search.items():
        _check_key(file, base, key, values)
    count = math.prod(len(values) for values in spec.search.values())
    if count > MAX_CONFIGURATIONS:
        raise ConfigError(
            file,
            "search",
            f"{count:,} configurations; advise searches at most {MAX_CONFIGURATIONS:,}",
        )
    _devices(spec, base, scenario, file)
    points = [
        Point(index, tuple(zip(spec.search, values, strict=True)))
        for index, values in enumerate(itertools.product(*spec.search.values()))
    ]
    loaded = LoadedAdvice(spec, path, base, scenario, slo, points)
    return LoadedAdvice(spec, path, base, load_scenario(base, loaded.fixed), slo, points)
