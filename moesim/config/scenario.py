"""Scenario: model card + cluster + workload + policies + seed, the unit that moesim runs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from moesim.config.cluster import MAX_GPUS, ClusterSpec
from moesim.config.fields import Frozen
from moesim.config.model import ModelSpec
from moesim.config.policies import PoliciesSpec
from moesim.config.serving import RequestsSpec, SloSpec

__all__ = [
    "MAX_GPUS",
    "MAX_STEPS",
    "ClusterSpec",
    "MtpSpec",
    "PoliciesSpec",
    "Scenario",
    "SyntheticRouting",
    "TraceRouting",
    "WorkloadSpec",
]


# Each step is a row of result.json's per-step table (about 115 bytes) and costs about 0.1 to
# 3 ms of wall time (tiny to 8192-GPU scenarios); a fixed batch's metrics settle far sooner.
MAX_STEPS = 100_000
MAX_ASSIGNMENTS_PER_STEP = 1 << 26  # token-level routing: 67M token-expert pairs a step
# A count-level cell (one multinomial draw per choice) costs about this many token draws, as
# measured by benchmarks/sim_speed.py; auto draws counts where that is less work.
COUNT_CELL_COST = 4
# Below this many token draws per layer a step costs microseconds at token level, which is
# exact for every downstream use (reference replay, traces, per-token accounting).
MIN_COUNT_LEVEL_DRAWS = 1 << 14


class SyntheticRouting(Frozen):
    """Top-k routing drawn per token from a per-layer expert popularity.

    Popularity is a Zipf law over a random ranking of the experts (``skew: 0`` is uniform).
    At each step a layer keeps the previous step's ranking with probability ``locality`` and
    draws a fresh one otherwise; layers are independent. ``fit``: a trace whose per-layer skew
    and locality replace ``skew`` and ``locality`` (``workload.fit``).
    """

    source: Literal["synthetic"]
    distribution: Literal["uniform", "zipf"] = "zipf"
    skew: float = Field(default=1.0, ge=0)
    locality: float = Field(default=0.0, ge=0, le=1)
    fit: str | None = Field(default=None, min_length=1)
    resolution: Literal["auto", "tokens", "counts"] = Field(
        default="auto",
        description="draw each token's experts, or each GPU's token counts per expert "
        "(the same law); auto takes whichever is less work",
    )


class TraceRouting(Frozen):
    """Routing replayed from an ``.npz`` with ``expert_ids [steps, moe_layers, tokens, top_k]``."""

    source: Literal["trace"]
    path: str


Routing = Annotated[SyntheticRouting | TraceRouting, Field(discriminator="source")]


class MtpSpec(Frozen):
    """Multi-token prediction in decode (DeepSeek-V3's MTP module as a speculative drafter):
    each step verifies ``tokens`` drafted tokens per sequence besides the next one; each draft
    is accepted with probability ``acceptance`` if the one before it was, so a step emits
    ``1 + acceptance + ... + acceptance**tokens`` tokens per sequence on average. The drafting
    module's own layer is not counted."""

    tokens: int = Field(default=1, ge=1, le=16)
    acceptance: float = Field(default=0.8, gt=0, le=1, allow_inf_nan=False)

    @property
    def expected_tokens(self) -> float:
        return float(sum(self.acceptance**i for i in range(self.tokens + 1)))


class WorkloadSpec(Frozen):
    """``batch_size`` sequences per step across the cluster; decode makes one token each.

    ``serving``: ``requests`` arrive and a scheduler plans each step, so ``batch_size`` and
    ``seq_len`` are optional (a scheduler may read them) and ``steps`` is ignored.
    """

    phase: Literal["prefill", "decode", "serving"] = "decode"
    batch_size: int | None = Field(default=None, ge=1, validate_default=True)
    seq_len: int | None = Field(
        default=None,
        ge=1,
        validate_default=True,
        description="prompt length (prefill) / context length (decode)",
    )
    steps: int = Field(default=100, ge=1)
    routing: Routing = Field(default_factory=lambda: SyntheticRouting(source="synthetic"))
    logits: Literal["last", "all"] = Field(
        default="last",
        description="prefill: logits of each prompt's last position (serving) or of every "
        "position (scoring, as fairseq's eval_lm)",
    )
    requests: RequestsSpec | None = Field(default=None, validate_default=True)
    mtp: MtpSpec | None = None

    @field_validator("mtp")
    @classmethod
    def _mtp(cls, mtp: MtpSpec | None, info: ValidationInfo) -> MtpSpec | None:
        phase = info.data.get("phase")
        if mtp is not None and phase != "decode":
            raise ValueError(f"multi-token prediction applies to phase decode, not {phase}")
        return mtp

    @field_validator("batch_size", "seq_len")
    @classmethod
    def _fixed_batch(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None and info.data.get("phase", "serving") != "serving":
            raise PydanticCustomError("missing", "Field required")
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: int) -> int:
        if steps > MAX_STEPS:
            raise ValueError(
                f"{steps:,} steps; moesim runs at most {MAX_STEPS:,}: each step is a row of "
                "result.json (about 115 bytes) and costs 0.1-3 ms of wall time, and a fixed "
                "batch's metrics settle in far fewer steps"
            )
        return steps

    @field_validator("requests")
    @classmethod
    def _requests(cls, requests: RequestsSpec | None, info: ValidationInfo) -> RequestsSpec | None:
        phase = info.data.get("phase")
        if phase == "serving" and requests is None:
            raise ValueError("required for phase serving")
        if phase in ("prefill", "decode") and requests is not None:
            raise ValueError(f"applies to phase serving only, not {phase}")
        return requests

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one fixed-batch step; a serving step's tokens follow its plan instead."""
        if self.batch_size is None or self.seq_len is None:
            raise ValueError("a serving step's tokens follow its plan: pass them explicitly")
        if self.phase == "prefill":
            return self.batch_size * self.seq_len
        return self.batch_size * (1 + (self.mtp.tokens if self.mtp is not None else 0))

    @property
    def output_tokens_per_step(self) -> float:
        """Tokens a fixed-batch step emits: a first token per prompt, or per sequence the
        next one (and the accepted drafts, with multi-token prediction)."""
        if self.batch_size is None:
            raise ValueError("a serving step's tokens follow its plan")
        return self.batch_size * (self.mtp.expected_tokens if self.mtp is not None else 1.0)


class Scenario(Frozen):
    name: str = Field(min_length=1)
    seed: int = Field(default=0, ge=0)
    model: ModelSpec
    cluster: ClusterSpec
    workload: WorkloadSpec
    policies: PoliciesSpec = Field(default_factory=PoliciesSpec)
    slo: SloSpec | None = None

    @field_validator("slo")
    @classmethod
    def _slo(cls, slo: SloSpec | None, info: ValidationInfo) -> SloSpec | None:
        workload = info.data.get("workload")
        if slo is not None and workload is not None and workload.phase != "serving":
            raise ValueError(f"applies to workload.phase serving only, not {workload.phase}")
        return slo

    @model_validator(mode="after")
    def _fits(self) -> Scenario:
        if self.cluster.pools is not None and self.workload.phase != "serving":
            raise ValueError(
                "cluster.pools: prefill and decode pools serve requests (workload.phase: "
                f"serving), not a fixed {self.workload.phase} batch"
            )
        pools = self.cluster.pools or []
        named = [(f"cluster.pools ({p.role}): ", self.cluster.pool(p)) for p in pools]
        for where, cluster in named or [("", self.cluster)]:
            try:
                self._check_device(cluster)
                self._check_layout(cluster)
            except ValueError as error:
                raise ValueError(f"{where}{error}") from None
        cache = self.policies.cache
        if cache.name != "none" and cache.layers not in ("all", *self.model.stacks()):
            raise ValueError(
                f"policies.cache.layers is {cache.layers}, but {self.model.name} has no "
                f"{cache.layers} (it is a {self.model.architecture} model)"
            )
        if self.workload.phase == "serving":  # the serving loop sizes each step from its plan
            return self
        layers = max(self.model.moe_layers(self.stack()), 1)
        assignments = layers * self.workload.tokens_per_step * self.model.top_k
        if self.routing_resolution() == "tokens" and assignments > MAX_ASSIGNMENTS_PER_STEP:
            raise ValueError(
                f"a step routes {assignments:,} token-expert pairs ({layers} MoE layers x "
                f"{self.workload.tokens_per_step:,} tokens x top-{self.model.top_k}); token-"
                f"level routing handles at most {MAX_ASSIGNMENTS_PER_STEP:,} (synthetic "
                "routing at workload.routing.resolution: counts has no such limit)"
            )
        return self

    def clusters(self) -> list[ClusterSpec]:
        """The clusters the scenario runs on: each pool's, or the one cluster."""
        cluster = self.cluster
        return [cluster.pool(pool) for pool in cluster.pools or []] or [cluster]

    def on(self, cluster: ClusterSpec) -> Scenario:
        """This scenario on ``cluster`` (one of ``clusters()``: already validated)."""
        return self.model_copy(update={"cluster": cluster})

    def _check_device(self, cluster: ClusterSpec) -> None:
        peaks = cluster.device.compute.peak_flops
        for field, dtype in (
            ("dtype", self.model.dtype),
            ("attention_dtype", self.model.part_dtype("attention")),
        ):
            if dtype not in peaks:
                raise ValueError(
                    f"device {cluster.device.name} has no peak_flops for the model's "
                    f"{field} {dtype} (it lists {', '.join(sorted(peaks))})"
                )
        if cluster.gpus > cluster.domain and cluster.device.links.network is None:
            raise ValueError(
                f"{cluster.gpus // cluster.domain} NVLink domains need links.network in the "
                "device profile"
            )
        if cluster.domain > 1 and cluster.device.links.nvlink is None:
            raise ValueError(
                "several GPUs per NVLink domain need links.nvlink in the device profile"
            )

    def _check_layout(self, cluster: ClusterSpec) -> None:
        """A layout the model cannot take: TP that does not divide the heads (or the FFNs),
        TP groups that straddle NVLink domains (placement refuses expert ranks that cannot
        hold its slots evenly where it needs them)."""
        model = self.model
        attention_tp, expert_tp = cluster.parallel.attention_tp, cluster.parallel.expert_tp
        if model.heads % attention_tp:
            raise ValueError(
                f"cluster.parallel.attention_tp ({attention_tp}) does not divide the "
                f"{model.heads} attention heads of {model.name}"
            )
        widths = {"d_ffn": model.d_ffn, "dense_d_ffn": model.dense_d_ffn or model.d_ffn}
        for name, tp in (("attention_tp", attention_tp), ("expert_tp", expert_tp)):
            if tp > 1 and (cluster.domain % tp and tp % cluster.domain):
                raise ValueError(
                    f"cluster.parallel.{name} ({tp}): its groups would straddle NVLink domains "
                    f"of {cluster.domain} GPUs (make one a multiple of the other)"
                )
            field = "d_ffn" if name == "expert_tp" else "dense_d_ffn"
            if widths[field] % tp:
                raise ValueError(
                    f"cluster.parallel.{name} ({tp}) does not divide {model.name}'s "
                    f"{field} ({widths[field]})"
                )
        if self.policies.alltoall == "hierarchical" and self.policies.gating.name == "static":
            raise ValueError(
                "policies.alltoall: hierarchical dispatch moves exact rows (dynamic gating); "
                "static gating's padded slots all travel"
            )
        if self.policies.overlap.name != "none" and self.policies.cache.name != "none":
            raise ValueError(
                "policies.overlap: micro-batch overlap with expert buffering is not modelled"
            )
        if expert_tp > 1 and self.policies.cache.name != "none":
            raise ValueError("cluster.parallel.expert_tp > 1 with expert buffering is not modelled")

    def routing_resolution(self, tokens: int | None = None) -> Literal["tokens", "counts"]:
        """How the routing of a step of ``tokens`` tokens (by default the fixed batch's; a
        serving step passes its own) is drawn: per token (traces always), or as counts per
        source GPU and expert; ``auto`` compares the work, ``T x K`` draws against
        ``G x E x K`` cells, and keeps tokens for small steps."""
        routing = self.workload.routing
        if not isinstance(routing, SyntheticRouting):
            return "tokens"
        if routing.resolution != "auto":
            return routing.resolution
        tokens = self.workload.tokens_per_step if tokens is None else tokens
        token_draws = tokens * self.model.top_k
        count_cells = self.cluster.gpus * self.model.num_experts * self.model.top_k
        fewer = token_draws > max(COUNT_CELL_COST * count_cells, MIN_COUNT_LEVEL_DRAWS)
        return "counts" if fewer else "tokens"

    def stack(self) -> str:
        """The layer stack the phase runs: an encoder-decoder prefills its encoder."""
        if self.model.architecture == "encoder-decoder" and self.workload.phase == "prefill":
            return "encoder"
        return "decoder"
