"""Build the shipped demonstration trace: routing captured from a tiny Mixtral-architecture
model with RANDOM weights (no training), over moesim's README as text.

Its routing reflects random routers, not a trained model's: use it to try the trace tooling
(`moesim trace stats`, scenarios replaying or fitting a trace), not to study a real model.
Run from the repository root: ``python scenarios/traces/build_tiny_mixtral.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import MixtralConfig, MixtralForCausalLM

from moesim.capture import capture
from moesim.workload import save_trace

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=512,
    )
    text = (HERE.parent.parent / "README.md").read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as folder:
        MixtralForCausalLM(config).save_pretrained(folder)
        trace = capture(folder, text, seq_len=64, batch_size=4, max_steps=48)
    metadata = {
        **trace.metadata,
        "model": "tiny Mixtral architecture, random weights (4 layers, 8 experts, top-2)",
        "source": trace.metadata["source"].replace(folder, "a temporary folder")
        + "; demonstration only: random routers, not a trained model",
    }
    out = save_trace(
        HERE / "tiny-mixtral-random.npz",
        trace.expert_ids,
        gate_weights=trace.gate_weights,
        metadata=metadata,
    )
    print(f"wrote {out}: {trace.expert_ids.shape}")


if __name__ == "__main__":
    main()
