"""Routing traces: ``.npz`` archives of what the router chose, token by token.

Members: ``expert_ids [steps, moe_layers, tokens, top_k]`` (integers, distinct per token,
highest score first), optionally ``gate_weights`` of the same shape (the router's scores), and
``metadata``, a JSON object with ``model``, ``num_experts``, ``top_k``, ``phase``, ``source``
and ``date``. ``save_trace`` writes them uncompressed so that ``read_trace`` memory-maps the
arrays: a trace larger than memory is read only where a run needs it.

A scenario replays a trace at its own batch size: per layer, the trace's tokens are read in
order as one stream (step after step) and cut into steps of the scenario's token count
(``recut``); the trace must hold at least ``steps x tokens`` tokens.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moesim.errors import ConfigError
from moesim.files import publish
from moesim.workload.npz_mmap import load_member, read_npy_header

__all__ = [
    "Trace",
    "check_ids",
    "load_trace",
    "read_trace",
    "recut",
    "save_trace",
]

_BLOCK_ELEMENTS = 1 << 22  # validated at a time
MAX_INFLATED_BYTES = 1 << 30  # a compressed member is read into memory whole


@dataclass(frozen=True)
class Trace:
    """A trace's arrays (possibly memory maps) and metadata."""

    expert_ids: np.ndarray
    gate_weights: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def num_experts(self) -> int:
        """From the metadata, else one more than the largest id."""
        given = self.metadata.get("num_experts")
        if given is not None:
            return int(given)
        return max(1, int(_extremes(self.expert_ids)[1]) + 1) if self.expert_ids.size else 1


def save_trace(
    path: str | Path,
    expert_ids: np.ndarray,
    *,
    gate_weights: np.ndarray | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write a trace (atomically: a failed write leaves any previous file in place)."""
    out = Path(path)
    ids = np.asarray(expert_ids)
    if ids.ndim != 4 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"expert_ids must be integers [steps, layers, tokens, top_k], got {ids.shape}"
        )
    small = np.int16 if ids.size == 0 or int(ids.max()) <= np.iinfo(np.int16).max else np.int32
    arrays = {
        "expert_ids": np.ascontiguousarray(ids, dtype=small),
        "metadata": np.array(json.dumps(metadata or {})),
    }
    if gate_weights is not None:
        if np.shape(gate_weights) != ids.shape:
            raise ValueError(f"gate_weights must have the shape of expert_ids, {ids.shape}")
        arrays["gate_weights"] = np.ascontiguousarray(gate_weights, dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".npz")
    os.close(handle)
    try:
        np.savez(temporary, **arrays)
        publish(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out


def _blocks(array: np.ndarray):
    """Consecutive step ranges of ``array`` of about ``_BLOCK_ELEMENTS`` elements."""
    per_step = max(1, int(np.prod(array.shape[1:])))
    step = max(1, _BLOCK_ELEMENTS // per_step)
    for first in range(0, array.shape[0], step):
        yield np.asarray(array[first : first + step])


def _extremes(ids: np.ndarray) -> tuple[int, int]:
    lows, highs = zip(*((int(b.min()), int(b.max())) for b in _blocks(ids) if b.size), strict=True)
    return min(lows), max(highs)


def read_trace(path: str | Path) -> Trace:
    """The trace at ``path``, its arrays memory-mapped, its structure checked (not its ids:
    ``check_ids`` reads them, and a run checks only the steps it uses)."""
    file = Path(path)
    name = str(path)
    try:
        with zipfile.ZipFile(file) as archive:
            members = {m[:-4] for m in archive.namelist() if m.endswith(".npy")}
    except (OSError, zipfile.BadZipFile) as error:
        raise ConfigError(name, None, f"cannot read as an .npz trace: {error}") from None
    if "expert_ids" not in members:
        raise ConfigError(name, "expert_ids", f"missing (the file has {sorted(members)})")
    try:
        for member in members & {"expert_ids", "gate_weights"}:
            _check_inflated_size(file, member)
        ids = load_member(file, "expert_ids")
        weights = load_member(file, "gate_weights") if "gate_weights" in members else None
        text = str(load_member(file, "metadata")) if "metadata" in members else "{}"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ConfigError(name, None, f"cannot read as an .npz trace: {error}") from None
    if ids.ndim != 4 or 0 in ids.shape:
        raise ConfigError(
            name,
            "expert_ids",
            f"expected 4 non-empty dims [steps, layers, tokens, top_k], got {ids.shape}",
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(name, "expert_ids", f"expected integers, got {ids.dtype}")
    if weights is not None and weights.shape != ids.shape:
        raise ConfigError(
            name, "gate_weights", f"shape {weights.shape} differs from expert_ids {ids.shape}"
        )
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(name, "metadata", f"not JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise ConfigError(name, "metadata", "expected a JSON object")
    experts = metadata.get("num_experts")
    if experts is not None and (type(experts) is not int or experts < 1):
        raise ConfigError(
            name, "metadata.num_experts", f"expected a positive integer, got {experts!r}"
        )
    return Trace(ids, weights, metadata)


def _check_inflated_size(file: Path, member: str) -> None:
    """A compressed member is inflated into memory whole: refuse one above
    ``MAX_INFLATED_BYTES`` before reading it (a stored one is memory-mapped instead)."""
    with zipfile.ZipFile(file) as archive:
        info = archive.getinfo(f"{member}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            return
        with archive.open(info) as stream:
            shape, _, dtype = read_npy_header(stream)
    needed = math.prod(shape) * dtype.itemsize
    if needed > MAX_INFLATED_BYTES:
        raise ConfigError(
            str(file),
            member,
            f"is compressed and would take {needed / 1e9:,.1f} GB in memory (at most "
            f"{MAX_INFLATED_BYTES / 1e9:.1f} GB); save the trace uncompressed (numpy.savez, "
            "or moesim trace convert) so that it is memory-mapped",
        )


def check_ids(ids: np.ndarray, num_experts: int, file: str = "trace") -> None:
    """Ids within ``[0, num_experts)`` and distinct within each token's top-k."""
    if not ids.size:
        return
    low, high = _extremes(ids)
    if low < 0 or high >= num_experts:
        raise ConfigError(
            file, "expert_ids", f"ids span [{low}, {high}], expected [0, {num_experts - 1}]"
        )
    if ids.shape[-1] > 1 and any(
        (np.diff(np.sort(block, axis=-1), axis=-1) == 0).any() for block in _blocks(ids)
    ):
        raise ConfigError(file, "expert_ids", "a token picks the same expert twice in its top-k")


def load_trace(path: str | Path, num_experts: int, top_k: int, layers: int) -> np.ndarray:
    """``expert_ids_NLTK`` from ``path``, memory-mapped, its shape and metadata checked against
    the model's E, K and MoE layers (``recut`` checks the ids it uses)."""
    file = str(path)
    trace = read_trace(path)
    ids = trace.expert_ids
    given = trace.metadata.get("num_experts")
    if given is not None and given != num_experts:
        raise ConfigError(
            file, "metadata.num_experts", f"is {given}, the model has {num_experts} experts"
        )
    if ids.shape[1] != layers:
        raise ConfigError(
            file, "expert_ids", f"has {ids.shape[1]} MoE layers, the model runs {layers}"
        )
    if ids.shape[3] != top_k:
        raise ConfigError(file, "expert_ids", f"has top_k {ids.shape[3]}, the model uses {top_k}")
    return ids


def recut(
    ids_NLTK: np.ndarray, steps: int, tokens: int, file: str = "trace", num_experts: int = 0
) -> np.ndarray:
    """The first ``steps x tokens`` tokens of a trace re-cut into ``steps`` steps of ``tokens``
    tokens (see the module docstring), read into memory as small integers and, given
    ``num_experts``, checked (``check_ids``)."""
    n, layers, t, k = ids_NLTK.shape
    if n * t < steps * tokens:
        raise ConfigError(
            file,
            "expert_ids",
            f"holds {n * t} tokens per layer ({n} steps x {t}); the scenario needs "
            f"{steps * tokens} ({steps} steps x {tokens})",
        )
    used = np.asarray(ids_NLTK[: math.ceil(steps * tokens / t) if t else 0])
    if num_experts:
        check_ids(used, num_experts, file)
    small = np.int16 if used.size == 0 or int(used.max()) <= np.iinfo(np.int16).max else np.int32
    used = used.astype(small)
    if (used.shape[0], t) == (steps, tokens):
        return used
    stream_LXK = used.transpose(1, 0, 2, 3).reshape(layers, -1, k)[:, : steps * tokens]
    return stream_LXK.reshape(layers, steps, tokens, k).transpose(1, 0, 2, 3)
