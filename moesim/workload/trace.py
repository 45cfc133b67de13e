"""Routing replayed from an ``.npz`` trace: ``expert_ids [steps, moe_layers, tokens, top_k]``.

A trace recorded at another batch size is re-cut: per layer, its tokens are read in order as
one stream (step after step) and cut into steps of the scenario's token count. The trace must
hold at least ``steps * tokens_per_step`` tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.errors import ConfigError

__all__ = ["load_trace", "recut"]


def load_trace(path: str | Path, num_experts: int, top_k: int, layers: int) -> np.ndarray:
    """``expert_ids_NLTK`` from ``path``, checked against the model's E, K and MoE layers:
    integer ids in range, ``top_k`` distinct experts per token."""
    file = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(file, None, f"cannot read as .npz: {error}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ConfigError(file, None, "expected an .npz archive with an array expert_ids")
    with archive:
        if "expert_ids" not in archive.files:
            raise ConfigError(file, "expert_ids", f"missing (the file has {archive.files})")
        ids = archive["expert_ids"]
    if ids.ndim != 4:
        raise ConfigError(
            file,
            "expert_ids",
            f"expected 4 dims [steps, layers, tokens, top_k], got shape {ids.shape}",
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(file, "expert_ids", f"expected integers, got {ids.dtype}")
    if ids.shape[1] != layers:
        raise ConfigError(
            file, "expert_ids", f"has {ids.shape[1]} MoE layers, the model runs {layers}"
        )
    if ids.shape[3] != top_k:
        raise ConfigError(file, "expert_ids", f"has top_k {ids.shape[3]}, the model uses {top_k}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        raise ConfigError(
            file,
            "expert_ids",
            f"ids span [{ids.min()}, {ids.max()}], expected [0, {num_experts - 1}]",
        )
    ids = ids.astype(np.int16 if num_experts <= np.iinfo(np.int16).max else np.int32)
    if top_k > 1 and (np.diff(np.sort(ids, axis=-1), axis=-1) == 0).any():
        raise ConfigError(file, "expert_ids", "a token picks the same expert twice in its top-k")
    return ids


def recut(ids_NLTK: np.ndarray, steps: int, tokens: int, file: str = "trace") -> np.ndarray:
    """Re-cut a trace into ``steps`` steps of ``tokens`` tokens (see the module docstring)."""
    n, layers, t, k = ids_NLTK.shape
    if (n, t) == (steps, tokens):
        return ids_NLTK
    if n * t < steps * tokens:
        raise ConfigError(
            file,
            "expert_ids",
            f"holds {n * t} tokens per layer ({n} steps x {t}); the scenario needs "
            f"{steps * tokens} ({steps} steps x {tokens})",
        )
    stream_LXK = ids_NLTK.transpose(1, 0, 2, 3).reshape(layers, n * t, k)[:, : steps * tokens]
    return stream_LXK.reshape(layers, steps, tokens, k).transpose(1, 0, 2, 3)
