"""Serving workloads: how requests arrive, how long their prompts and outputs are, the SLO.

A parameter a distribution or process needs is required, one it does not take is an error, each
reported on the field itself (``workload.requests.arrival.rate: required for process poisson``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from moesim.config.fields import Frozen

__all__ = [
    "MAX_REQUESTS",
    "MAX_REQUEST_TOKENS",
    "ArrivalSpec",
    "LengthSpec",
    "RequestsSpec",
    "SloSpec",
]

# Each request is a row of requests.parquet and of the serving loop's per-request state (its
# timestamps, KV blocks, queue position); a million is hours of traffic at a busy deployment's
# rate and already seconds of table work per run.
MAX_REQUESTS = 1_000_000
# Tokens in one prompt or output, drawn or read from a trace: above any model's context window
# (and small enough that a draw is exact in float64 and int64).
MAX_REQUEST_TOKENS = 1 << 24
# A lognormal's sigma: exp(10 sigma) is already 10^43, past any length; a larger one only
# overflows the draw. A gamma process's cv: outside [1e-3, 1e3] its shape (1 / cv^2) leaves
# float64 (cv^2 under- or overflows) long before it means anything different from constant
# arrivals or one burst.
MAX_SIGMA = 10.0
CV_RANGE = (1e-3, 1e3)

_RATE_PROCESSES = ("poisson", "gamma", "constant")
_LENGTH_PARAMETERS = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "lognormal": ("mean", "sigma"),
}


def _check(value: object, name: str, owner: str, needs: tuple[str, ...], kind: str) -> object:
    """``value`` of parameter ``name`` for ``owner`` (a process or distribution), which needs the
    parameters ``needs``: None where it needs it is an error, a value where it does not, too."""
    if name in needs and value is None:
        raise ValueError(f"required for {kind} {owner}")
    if name not in needs and value is not None:
        takes = ", ".join(needs) or "no parameters"
        raise ValueError(f"not a parameter of {kind} {owner} (it takes {takes})")
    return value


class ArrivalSpec(Frozen):
    """When requests arrive: a Poisson, Gamma or evenly spaced process at ``rate`` requests/s,
    all at once (``offline``), or at the times a request trace gives (``trace``).

    ``gamma``: inter-arrival gaps of mean ``1/rate`` and coefficient of variation ``cv`` (1 is
    Poisson, above 1 burstier, below 1 more regular).
    """

    process: Literal["poisson", "gamma", "constant", "offline", "trace"]
    rate: float | None = Field(default=None, gt=0, validate_default=True)
    cv: float | None = Field(
        default=None, ge=CV_RANGE[0], le=CV_RANGE[1], description="gamma only; default 1"
    )

    @field_validator("rate")
    @classmethod
    def _rate(cls, rate: float | None, info: ValidationInfo) -> float | None:
        process = info.data.get("process")
        if process is not None:  # else reported on its own field
            needs = ("rate",) if process in _RATE_PROCESSES else ()
            _check(rate, "rate", process, needs, "process")
        return rate

    @model_validator(mode="after")
    def _cv(self) -> ArrivalSpec:
        if self.cv is not None and self.process != "gamma":
            raise ValueError(f"cv applies to process gamma only, not {self.process}")
        return self


class LengthSpec(Frozen):
    """A token count per request: ``fixed`` (``value``), ``uniform`` (``low`` to ``high``, both
    included) or ``lognormal`` (``mean`` of the count, ``sigma`` of the underlying normal).

    Draws are rounded to integers and clipped to ``[min, max]`` (``max`` by default
    ``MAX_REQUEST_TOKENS``, 2^24, as for a trace's lengths).
    """

    distribution: Literal["fixed", "uniform", "lognormal"]
    value: int | None = Field(default=None, ge=1, le=MAX_REQUEST_TOKENS, validate_default=True)
    low: int | None = Field(default=None, ge=1, le=MAX_REQUEST_TOKENS, validate_default=True)
    high: int | None = Field(default=None, ge=1, le=MAX_REQUEST_TOKENS, validate_default=True)
    mean: float | None = Field(default=None, gt=0, le=MAX_REQUEST_TOKENS, validate_default=True)
    sigma: float | None = Field(default=None, ge=0, le=MAX_SIGMA, validate_default=True)
    min: int = Field(default=1, ge=1, le=MAX_REQUEST_TOKENS)
    max: int | None = Field(default=None, ge=1, le=MAX_REQUEST_TOKENS)

    @field_validator("value", "low", "high", "mean", "sigma")
    @classmethod
    def _parameter(cls, value: float | None, info: ValidationInfo) -> float | None:
        distribution = info.data.get("distribution")
        if distribution is None:  # reported on its own field
            return value
        _check(
            value, info.field_name, distribution, _LENGTH_PARAMETERS[distribution], "distribution"
        )
        low = info.data.get("low")
        if info.field_name == "high" and value is not None and low is not None and value < low:
            raise ValueError(f"{value} is below low ({low})")
        return value

    @model_validator(mode="after")
    def _caps(self) -> LengthSpec:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class RequestsSpec(Frozen):
    """The requests a serving run receives: ``count`` of them (at most the rows of ``trace``),
    arriving by ``arrival``, with lengths drawn from ``prompt_tokens`` and ``output_tokens`` or
    read from a request ``trace`` (CSV or JSONL; see ``moesim.workload.request_traces``).

    With ``arrival.process: trace`` the trace gives arrivals and lengths; with another process
    the trace gives only the lengths and the process the arrivals.
    """

    count: int = Field(ge=1)
    arrival: ArrivalSpec
    trace: str | None = Field(default=None, min_length=1)
    prompt_tokens: LengthSpec | None = Field(default=None, validate_default=True)
    output_tokens: LengthSpec | None = Field(default=None, validate_default=True)

    @field_validator("count")
    @classmethod
    def _count(cls, count: int) -> int:
        if count > MAX_REQUESTS:
            raise ValueError(
                f"{count:,} requests; moesim serves at most {MAX_REQUESTS:,} in one run: each "
                "is a row of requests.parquet and of the per-request state kept in memory, and "
                "a million is hours of traffic at a busy deployment's rate"
            )
        return count

    @field_validator("prompt_tokens", "output_tokens")
    @classmethod
    def _lengths(cls, lengths: LengthSpec | None, info: ValidationInfo) -> LengthSpec | None:
        if "trace" not in info.data or "arrival" not in info.data:  # reported on their fields
            return lengths
        timed = info.data["arrival"].process == "trace"  # without a trace: see _trace_arrivals
        if info.data["trace"] is None and lengths is None and not timed:
            raise ValueError("required without a request trace (trace)")
        if info.data["trace"] is not None and lengths is not None:
            raise ValueError("the request trace (trace) gives the lengths: remove one of them")
        return lengths

    @model_validator(mode="after")
    def _trace_arrivals(self) -> RequestsSpec:
        if self.trace is None and self.arrival.process == "trace":
            raise ValueError("arrival.process trace needs a request trace (trace: PATH)")
        return self


class SloSpec(Frozen):
    """Latency targets a request must meet to count towards goodput, at ``percentile``."""

    ttft_s: float | None = Field(default=None, gt=0, description="time to first token")
    tpot_s: float | None = Field(default=None, gt=0, description="time per output token")
    percentile: float = Field(default=99.0, gt=0, le=100)

    @model_validator(mode="after")
    def _some_target(self) -> SloSpec:
        if self.ttft_s is None and self.tpot_s is None:
            raise ValueError("give at least one target: ttft_s or tpot_s")
        return self
