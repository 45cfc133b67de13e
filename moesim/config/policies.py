"""PoliciesSpec: the scenario's named policies (each validated by its family's registry) and
the choices of how the software stack runs the MoE layer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from moesim.config.fields import Frozen
from moesim.config.registry import (
    CACHE,
    GATING,
    OVERLAP,
    PLACEMENT,
    SCHEDULER,
    PolicyParams,
    Registry,
)

__all__ = ["PoliciesSpec"]

_FAMILIES: dict[str, Registry[Any]] = {
    "gating": GATING,
    "placement": PLACEMENT,
    "cache": CACHE,
    "scheduler": SCHEDULER,
    "overlap": OVERLAP,
}


def _policy(registry: Registry[Any], raw: Any) -> PolicyParams:
    try:
        return registry.validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise PydanticCustomError(
            "policy", "{message}", {"message": first["msg"], "field": field}
        ) from None
    except ValueError as error:
        raise PydanticCustomError("policy", "{message}", {"message": str(error)}) from None


class PoliciesSpec(Frozen):
    gating: SerializeAsAny[PolicyParams] = Field(default_factory=lambda: GATING.validate("dynamic"))

    placement: SerializeAsAny[PolicyParams] = Field(
        default_factory=lambda: PLACEMENT.validate("contiguous")
    )

    cache: SerializeAsAny[PolicyParams] = Field(default_factory=lambda: CACHE.validate("none"))

    scheduler: SerializeAsAny[PolicyParams] = Field(
        default_factory=lambda: SCHEDULER.validate("continuous")
    )

    overlap: SerializeAsAny[PolicyParams] = Field(default_factory=lambda: OVERLAP.validate("none"))

    alltoall: Literal["direct", "hierarchical"] = Field(
        default="direct",
        description="direct: every token-expert row travels to its expert's GPU; "
        "hierarchical: a token crosses the network once per remote NVLink domain it needs "
        "and is forwarded over NVLink inside it (DeepEP's normal kernels)",
    )

    expert_kernel: Literal["loop", "grouped"] = Field(
        default="loop",
        description="loop: each local expert's FFN is its own kernels (fairseq, the reference "
        "executor); grouped: one grouped GEMM per GPU and layer (vLLM fused_moe, DeepGEMM)",
    )

    router: Literal["round_robin", "least_loaded"] = Field(
        default="round_robin",
        description="serving: which data-parallel attention group gets a request (in a "
        "pool of a disaggregated cluster too); round_robin in arrival order, least_loaded "
        "the group with the fewest outstanding tokens (prompt and output not yet run)",
    )

    @field_validator(*_FAMILIES, mode="before")
    @classmethod
    def _named(cls, raw: Any, info: ValidationInfo) -> PolicyParams:
        return _policy(_FAMILIES[info.field_name], raw)
