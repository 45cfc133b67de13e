"""Routing captured from a local Hugging Face MoE checkpoint (a tool of the ``trace`` command:
it imports torch and transformers, which the workload package below the simulator never does).

The model runs on text with ``output_router_logits=True``; each MoE layer's router logits give
every token's top-k experts (highest first) and their softmax probabilities. That is the
routing of softmax routers (Mixtral, Qwen2-MoE / Qwen3-MoE, OLMoE, and the encoders of Switch
Transformers and NLLB-MoE, captured in prefill); for routers that add a bias or limit groups
before their top-k (DeepSeek-V3) it is the top-k of the raw logits, an approximation. Nothing
is downloaded: the checkpoint must be a local folder. Without a tokenizer in it, text is read
as UTF-8 bytes (ids modulo the vocabulary).

- ``prefill``: the text's tokens as one stream, cut into sequences of ``seq_len``; each step
  is one forward pass over ``batch_size`` sequences (``batch_size x seq_len`` tokens).
- ``decode``: ``batch_size`` prompts of ``seq_len`` tokens, then ``new_tokens`` greedy steps;
  each step is one new token per sequence.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from moesim.errors import MoesimError
from moesim.workload.trace import Trace

__all__ = ["HOW_TO_GET_A_MODEL", "capture"]

HOW_TO_GET_A_MODEL = (
    "--model: a local Hugging Face MoE checkpoint folder, e.g. from "
    "`huggingface-cli download mistralai/Mixtral-8x7B-v0.1 --local-dir models/mixtral` (or "
    "Qwen/Qwen1.5-MoE-A2.7B, allenai/OLMoE-1B-7B-0924 for something smaller); moesim never "
    "downloads"
)
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "moe_topk", "num_selected_experts", "top_k", "router_topk")
_FIXED_TOP_K = {"switch_transformers": 1, "nllb-moe": 2}  # set in their code, not their config

Progress = Callable[[int, int], None]


def _config_value(config, names: tuple[str, ...], what: str, path: Path) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise MoesimError(f"{path}: config.json names no {what} ({' / '.join(names)}): not an MoE?")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def _tokens(path: Path, texts: list[str], vocab: int) -> tuple[np.ndarray, str]:
    """The text's token ids: the checkpoint's tokenizer, else UTF-8 bytes."""
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        ids = [tokenizer(text)["input_ids"] for text in texts]
        return np.asarray([i for row in ids for i in row], dtype=np.int64), "tokenizer"
    data = "\n".join(texts).encode("utf-8")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64) % vocab, "utf-8 bytes"


def _cache_keyword(model) -> str:
    """The forward argument that takes the KV cache (renamed in transformers 5)."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _route(logits_layers, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids_LTK`` and ``weights_LTK`` from each MoE layer's ``[tokens, E]`` router logits."""
    import torch

    ids, weights = [], []
    for logits in logits_layers:
        if isinstance(logits, tuple):  # (logits, expert index) in Switch-style outputs
            logits = logits[0]
        probs = torch.softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
        top = torch.topk(probs, top_k, dim=-1)
        ids.append(top.indices.numpy())
        weights.append(top.values.numpy())
    return np.stack(ids), np.stack(weights)


def capture(
    model_path: str | Path | None,
    texts: list[str],
    *,
    phase: Literal["prefill", "decode"] = "prefill",
    seq_len: int = 128,
    batch_size: int = 8,
    new_tokens: int = 16,
    max_steps: int | None = None,
    on_step: Progress | None = None,
) -> Trace:
    """The routing of ``texts`` through the checkpoint at ``model_path`` (see the module)."""
    if model_path is None or not Path(model_path).is_dir():
        raise MoesimError(HOW_TO_GET_A_MODEL)
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
    except ImportError:
        raise MoesimError("trace capture needs transformers: pip install 'moesim[trace]'") from None
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = Path(model_path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        loader = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = loader.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as error:
        raise MoesimError(f"{path}: cannot load as an MoE language model: {error}") from None
    if config.is_encoder_decoder and phase == "decode":
        raise MoesimError(f"{path}: an encoder-decoder model is captured in its encoder (prefill)")
    experts = _config_value(config, _EXPERTS, "expert count", path)
    top_k = _FIXED_TOP_K.get(config.model_type) or _config_value(config, _TOP_K, "top-k", path)
    forward = model.get_encoder() if config.is_encoder_decoder else model
    stream, tokenized = _tokens(path, texts, config.vocab_size)
    sequences = len(stream) // seq_len
    if sequences < batch_size:
        raise MoesimError(
            f"--text: {len(stream)} tokens make {sequences} sequences of {seq_len}; "
            f"a step needs {batch_size} (lower --seq-len or --batch-size, or add text)"
        )
    batches = stream[: sequences * seq_len].reshape(sequences, seq_len)
    steps_ids, steps_weights = [], []
    with torch.inference_mode():
        if phase == "prefill":
            total = (
                sequences // batch_size
                if max_steps is None
                else min(max_steps, sequences // batch_size)
            )
            for step in range(total):
                batch = torch.as_tensor(batches[step * batch_size : (step + 1) * batch_size])
                out = forward(batch, output_router_logits=True)
                ids, weights = _route(out.router_logits, top_k)
                steps_ids.append(ids)
                steps_weights.append(weights)
                if on_step is not None:
                    on_step(step + 1, total)
        else:
            total = new_tokens if max_steps is None else min(max_steps, new_tokens)
            keyword = _cache_keyword(model)
            prompt = torch.as_tensor(batches[:batch_size])
            out = model(prompt, use_cache=True)
            past, last = out.past_key_values, out.logits[:, -1].argmax(dim=-1, keepdim=True)
            for step in range(total):
                out = model(last, use_cache=True, output_router_logits=True, **{keyword: past})
                ids, weights = _route(out.router_logits, top_k)
                steps_ids.append(ids)
                steps_weights.append(weights)
                past, last = out.past_key_values, out.logits[:, -1].argmax(dim=-1, keepdim=True)
                if on_step is not None:
                    on_step(step + 1, total)
    metadata = {
        "model": f"{config.model_type}: {path.name}",
        "num_experts": experts,
        "top_k": top_k,
        "phase": phase,
        "source": f"captured from {path} ({tokenized}, seq_len {seq_len}, batch {batch_size})",
        "date": datetime.date.today().isoformat(),
    }
    return Trace(np.stack(steps_ids), np.stack(steps_weights), metadata)
