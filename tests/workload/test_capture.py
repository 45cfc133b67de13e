"""Capture from tiny randomly initialised Hugging Face MoE models built in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from moesim.capture import capture
from moesim.cli import main
from moesim.errors import MoesimError
from moesim.workload import read_trace

TEXT = ["the quick brown fox jumps over the lazy dog"] * 8


def _mixtral(path):
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
    )
    MixtralForCausalLM(config).save_pretrained(path)
    return path


def _qwen(path):
    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        max_position_embeddings=256,
    )
    Qwen2MoeForCausalLM(config).save_pretrained(path)
    return path


def _routers_choice(path, model_class, batch, top_k):
    """Independent route: forward hooks on every router module; the experts it selected
    (the indices it returns, else the top-k of its logits), layer by layer."""
    model = model_class.from_pretrained(path).eval()
    seen = []

    def hook(_module, _inputs, out):
        if isinstance(out, tuple) and len(out) == 3:  # (logits, weights, indices)
            seen.append(out[2].numpy())
        else:
            logits = out[0] if isinstance(out, tuple) else out
            seen.append(torch.topk(logits.float(), top_k, dim=-1).indices.numpy())

    for name, module in model.named_modules():
        if name.endswith("mlp.gate"):
            module.register_forward_hook(hook)
    with torch.inference_mode():
        model(batch)
    return np.stack(seen)


@pytest.mark.parametrize(
    ("build", "model_class", "layers", "experts"),
    [(_mixtral, MixtralForCausalLM, 2, 4), (_qwen, Qwen2MoeForCausalLM, 2, 8)],
)
def test_prefill_capture_is_the_routers_top_k_token_by_token(
    tmp_path, build, model_class, layers, experts
):
    path = build(tmp_path / "model")
    trace = capture(path, TEXT, seq_len=16, batch_size=2, max_steps=3)
    assert trace.expert_ids.shape == (3, layers, 32, 2)
    assert trace.metadata["num_experts"] == experts and trace.metadata["top_k"] == 2
    assert "utf-8 bytes" in trace.metadata["source"]
    # step 1 is sequences 2 and 3 of the byte stream, 16 bytes each
    stream = np.frombuffer("\n".join(TEXT).encode(), dtype=np.uint8).astype(np.int64)
    batch = torch.as_tensor(stream[32:64].reshape(2, 16))
    chosen = _routers_choice(path, model_class, batch, 2)
    assert chosen.shape == (layers, 32, 2)
    assert np.array_equal(np.sort(chosen, -1), np.sort(trace.expert_ids[1], -1))
    weights = trace.gate_weights
    assert np.all(weights[..., 0] >= weights[..., 1]) and np.all((weights > 0) & (weights < 1))


def test_decode_capture_has_one_token_per_sequence_per_step(tmp_path):
    trace = capture(
        _mixtral(tmp_path / "m"), TEXT, phase="decode", seq_len=8, batch_size=3, new_tokens=4
    )
    assert trace.expert_ids.shape == (4, 2, 3, 2) and trace.metadata["phase"] == "decode"
    assert np.all(np.diff(np.sort(trace.expert_ids, -1), axis=-1) > 0)  # distinct top-2


def test_capture_without_a_model_explains_how_to_get_one(tmp_path):
    with pytest.raises(MoesimError, match="huggingface-cli download"):
        capture(None, TEXT)
    with pytest.raises(MoesimError, match="a step needs 64"):
        capture(_mixtral(tmp_path / "m"), ["short"], seq_len=4, batch_size=64)


def test_cli_capture_then_stats_then_a_scenario_replays_it(tmp_path, capsys):
    model = _mixtral(tmp_path / "m")
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(TEXT))
    out = tmp_path / "t.npz"
    assert (
        main(
            [
                "trace",
                "capture",
                "--model",
                str(model),
                "--text",
                str(text),
                "--out",
                str(out),
                "--seq-len",
                "16",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    trace = read_trace(out)
    assert trace.expert_ids.shape[1:] == (2, 32, 2)
    assert main(["trace", "stats", str(out), "--plot", str(tmp_path / "plots")]) == 0
    assert "zipf s" in capsys.readouterr().out
    assert (tmp_path / "plots" / "coactivation.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["trace", "stats", str(out), "--json"]) == 0
    import json

    stats = json.loads(capsys.readouterr().out)
    assert len(stats["layers"]) == 2
    assert sum(stats["layers"][0]["popularity"]) == pytest.approx(1.0)


def _switch():
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    config = SwitchTransformersConfig(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        num_experts=4,
        encoder_sparse_step=1,
        decoder_sparse_step=1,
        expert_capacity=64,
    )
    return SwitchTransformersForConditionalGeneration(config)


def _nllb():
    from transformers import NllbMoeConfig, NllbMoeForConditionalGeneration

    config = NllbMoeConfig(
        vocab_size=256,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_experts=4,
        expert_capacity=64,
        encoder_sparse_step=1,
        decoder_sparse_step=1,
        max_position_embeddings=128,
    )
    return NllbMoeForConditionalGeneration(config)


@pytest.mark.parametrize(("build", "top_k"), [(_switch, 1), (_nllb, 2)])
def test_an_encoder_decoder_is_captured_in_its_encoder_with_its_fixed_top_k(tmp_path, build, top_k):
    """Switch routes top-1 and NLLB-MoE top-2, set in their code rather than their config."""
    torch.manual_seed(0)
    path = tmp_path / "model"
    build().save_pretrained(path)
    trace = capture(path, TEXT, seq_len=8, batch_size=2, max_steps=2)
    assert trace.expert_ids.shape == (2, 2, 16, top_k) and trace.metadata["top_k"] == top_k
    assert trace.expert_ids.max() < 4
    with pytest.raises(MoesimError, match="captured in its encoder"):
        capture(path, TEXT, phase="decode", seq_len=8, batch_size=2)
