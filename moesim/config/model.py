"""ModelSpec: the shape of an MoE transformer, as a model card in ``scenarios/models/`` gives it.

Parameter counts are derived here, once, so that memory and compute costs agree everywhere.
Layer ``i`` (0-based, within its stack) is an MoE layer when ``i >= first_dense_layers`` and
``(i + 1) % moe_every == 0`` (fairseq's ``moe_freq`` rule); ``moe_every: 0`` is a dense model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.config.fields import Frozen

__all__ = ["DTYPE_BYTES", "MlaSpec", "ModelSpec"]

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
Dtype = Literal["fp32", "fp16", "bf16", "fp8"]


class MlaSpec(Frozen):
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a rank-``q_lora_rank``
    bottleneck, keys and values from a cached latent of ``kv_lora_rank`` values plus one
    shared rotary key of ``rope_dim``; per head a ``nope_dim + rope_dim`` query-key width and
    a ``v_dim`` value width."""

    q_lora_rank: int = Field(ge=1)
    kv_lora_rank: int = Field(ge=1)
    rope_dim: int = Field(ge=1)
    nope_dim: int = Field(ge=1)
    v_dim: int = Field(ge=1)


class ModelSpec(Frozen):
    """An MoE (or dense) transformer. ``d_ffn`` is the width of one expert's FFN."""

    name: str = Field(min_length=1)
    architecture: Literal["decoder", "encoder-decoder"] = "decoder"
    layers: int = Field(ge=1)
    encoder_layers: int | None = Field(default=None, ge=1)
    decoder_layers: int | None = Field(default=None, ge=1)
    moe_every: int = Field(ge=0)
    first_dense_layers: int = Field(default=0, ge=0)
    d_model: int = Field(ge=1)
    d_ffn: int = Field(ge=1)
    dense_d_ffn: int | None = Field(default=None, ge=1, description="FFN width of dense layers")
    ffn_type: Literal["mlp", "glu"] = "mlp"
    num_experts: int = Field(default=0, ge=0)
    top_k: int = Field(default=1, ge=1)
    shared_experts: int = Field(default=0, ge=0)
    heads: int = Field(ge=1)
    kv_heads: int | None = Field(default=None, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    kv_dim: int | None = Field(default=None, ge=1, description="K+V width cached per token")
    attention_params: int | None = Field(default=None, ge=1, description="per layer, override")
    vocab_size: int = Field(ge=1)
    tied_embeddings: bool = True
    mla: MlaSpec | None = None
    dtype: Dtype = Field(default="fp16", description="weights and GEMMs of experts and FFNs")
    attention_dtype: Dtype | None = Field(default=None, description="attention; default dtype")
    kv_cache_dtype: Dtype | None = Field(default=None, description="KV cache; default dtype")
    dispatch_dtype: Dtype | None = Field(default=None, description="dispatch rows; default dtype")
    combine_dtype: Dtype | None = Field(default=None, description="combine rows; default dtype")
    sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.architecture == "encoder-decoder":
            if self.encoder_layers is None or self.decoder_layers is None:
                raise ValueError("an encoder-decoder needs encoder_layers and decoder_layers")
            if self.encoder_layers + self.decoder_layers != self.layers:
                raise ValueError(
                    f"encoder_layers + decoder_layers = "
                    f"{self.encoder_layers + self.decoder_layers}, expected layers = {self.layers}"
                )
        elif self.encoder_layers is not None or self.decoder_layers is not None:
            raise ValueError("encoder_layers/decoder_layers need architecture: encoder-decoder")
        if self.head_dim is None and self.heads > self.d_model:
            raise ValueError(
                f"heads = {self.heads} exceeds d_model = {self.d_model}: a head would have "
                "d_model // heads = 0 dimensions (give head_dim, or fewer heads)"
            )
        if self.mla is not None and (self.kv_dim is not None or self.attention_params is not None):
            raise ValueError("mla derives kv_dim and attention_params: give one or the other")
        if self.moe_every > 0:
            if self.num_experts < 1:
                raise ValueError("an MoE model (moe_every > 0) needs num_experts >= 1")
            if self.top_k > self.num_experts:
                raise ValueError(f"top_k = {self.top_k} exceeds num_experts = {self.num_experts}")
        return self

    # ---- derived shapes -------------------------------------------------------------------

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def part_bytes(self, part: Literal["attention", "kv_cache", "dispatch", "combine"]) -> int:
        """Bytes per element of one part's precision (the model's ``dtype`` unless set)."""
        return DTYPE_BYTES[self.part_dtype(part)]

    def part_dtype(self, part: Literal["attention", "kv_cache", "dispatch", "combine"]) -> str:
        return getattr(self, f"{part}_dtype") or self.dtype

    @property
    def q_dim(self) -> int:
        """Query-key width over all heads (MLA: ``nope_dim + rope_dim`` per head)."""
        if self.mla is not None:
            return self.heads * (self.mla.nope_dim + self.mla.rope_dim)
        return self.heads * (self.head_dim or self.d_model // self.heads)

    @property
    def v_dim(self) -> int:
        """Value width over all heads."""
        if self.mla is not None:
            return self.heads * self.mla.v_dim
        return self.q_dim

    @property
    def kv_width(self) -> int:
        """Elements of K and V cached per token per attention block (MLA: the latent and the
        rotary key)."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.rope_dim
        if self.kv_dim is not None:
            return self.kv_dim
        return 2 * (self.kv_heads or self.heads) * (self.head_dim or self.d_model // self.heads)

    @property
    def kv_splits(self) -> int:
        """Ways tensor parallelism can split the KV cache: by KV head (MLA's latent is shared
        by all heads, so it cannot split)."""
        return 1 if self.mla is not None else (self.kv_heads or self.heads)

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices of one FFN: up and down, plus a gate for GLU."""
        return 3 if self.ffn_type == "glu" else 2

    def stacks(self) -> dict[str, int]:
        """Layers per stack: ``{"decoder": n}`` or ``{"encoder": n, "decoder": m}``."""
        if self.architecture == "encoder-decoder":
            return {"encoder": self.encoder_layers or 0, "decoder": self.decoder_layers or 0}
        return {"decoder": self.layers}

    def is_moe_layer(self, index: int) -> bool:
        return (
            self.moe_every > 0
            and index >= self.first_dense_layers
            and (index + 1) % self.moe_every == 0
        )

    def moe_layers(self, stack: str) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.stacks()[stack]))

    @property
    def total_moe_layers(self) -> int:
        return sum(self.moe_layers(stack) for stack in self.stacks())

    # ---- parameter counts ------------------------------------------------------------------

    @property
    def attention_params_per_block(self) -> int:
        if self.attention_params is not None:
            return self.attention_params
        if (mla := self.mla) is not None:
            d, h = self.d_model, self.heads
            q = d * mla.q_lora_rank + mla.q_lora_rank * self.q_dim
            kv = d * self.kv_width + mla.kv_lora_rank * h * (mla.nope_dim + mla.v_dim)
            return q + kv + self.v_dim * d
        kv_proj = self.kv_width  # K and V projections together
        return self.d_model * self.q_dim + self.d_model * kv_proj + self.q_dim * self.d_model

    def attention_params_per_gpu(self, tp: int) -> float:
        """One attention block's parameters on each of ``tp`` GPUs that split its heads:
        per-head projections split ``tp`` ways, K/V projections ``min(tp, kv_splits)`` ways,
        MLA's down-projections (to the query and the KV latent) whole on every GPU."""
        total = self.attention_params_per_block
        if tp == 1 or self.attention_params is not None:
            return total / tp
        d = self.d_model
        if (mla := self.mla) is not None:
            whole = d * mla.q_lora_rank + d * self.kv_width
            return whole + (total - whole) / tp
        kv = d * self.kv_width
        return (total - kv) / tp + kv / min(tp, self.kv_splits)

    @property
    def expert_params(self) -> int:
        return self.ffn_matrices * self.d_model * self.d_ffn

    @property
    def dense_ffn_params(self) -> int:
        return self.ffn_matrices * self.d_model * (self.dense_d_ffn or self.d_ffn)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model * (1 if self.tied_embeddings else 2)

    def non_expert_parts(self) -> dict[str, int]:
        """Parameters on every GPU by part (what tensor parallelism splits differs)."""
        stacks = self.stacks()
        attention_blocks = self.layers + (stacks["decoder"] if "encoder" in stacks else 0)
        moe = self.total_moe_layers
        return {
            "embedding": self.embedding_params,
            "attention": attention_blocks * self.attention_params_per_block,
            "dense": (self.layers - moe) * self.dense_ffn_params,
            "router": moe * self.d_model * self.num_experts,
            "shared": moe * self.shared_experts * self.expert_params,
        }

    @property
    def non_expert_params(self) -> int:
        """Parameters on every GPU: embeddings, attention, dense FFNs, routers, shared experts."""
        return sum(self.non_expert_parts().values())

    @property
    def total_params(self) -> int:
        return (
            self.non_expert_params + self.total_moe_layers * self.num_experts * self.expert_params
        )
