"""Converters from published routing-trace layouts to moesim's trace format.

- ``flame``: Parquet with per-token columns ``indices`` (top-k expert ids) and ``scores``
  (router probabilities), one file per MoE layer whose row ``i`` is the same token in every
  file, as the FLAME-MoE traces are published; or one file with a ``layer`` column. Files
  given as a folder are taken in the order of the number in their names.
- ``megatron``: JSON Lines from Megatron-Core's ``--moe-routing-trace-path``, one record per
  (step, layer, rank) with ``top_indices`` (``[tokens][top_k]``); decoder records of one stage
  (``pre_dispatch`` when present), ranks concatenated in order within a step; records of the
  multi-token-prediction module (``mtp_idx``) are left out.

Both yield a token stream per layer, cut into steps of ``tokens_per_step`` tokens (an
incomplete last step is dropped).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from moesim.errors import MoesimError
from moesim.workload.trace import Trace

__all__ = ["FORMATS", "convert", "from_flame_parquet", "from_megatron_jsonl"]

FORMATS = ("flame", "megatron")


def _cut(stream_LXK: np.ndarray, weights_LXK: np.ndarray | None, tokens: int, source: str):
    layers, total, _ = stream_LXK.shape
    steps = total // tokens
    if steps == 0:
        raise MoesimError(f"{source}: {total} tokens per layer, fewer than one step of {tokens}")

    def cut(array):
        kept = array[:, : steps * tokens]
        return kept.reshape(layers, steps, tokens, -1).transpose(1, 0, 2, 3)

    return cut(stream_LXK), None if weights_LXK is None else cut(weights_LXK)


def _list_column(table, name: str, source: str, integer: bool) -> np.ndarray:
    """A Parquet column of equal-length lists (or of scalars: top-1) as a 2-D array."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    nested = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    values = column.flatten() if nested else column
    numeric = pa.types.is_integer(values.type) or (
        not integer and pa.types.is_floating(values.type)
    )
    if not numeric:
        expected = "integers" if integer else "numbers"
        raise MoesimError(f"{source}: column {name}: expected {expected}, got {values.type}")
    if column.null_count or values.null_count:
        raise MoesimError(f"{source}: column {name}: has missing values")
    if not nested:
        return column.to_numpy().reshape(-1, 1)
    lengths = np.unique(pa.compute.list_value_length(column).to_numpy(zero_copy_only=False))
    if lengths.size != 1 or lengths[0] < 1:
        raise MoesimError(f"{source}: column {name}: expected lists of one length, got {lengths}")
    return values.to_numpy(zero_copy_only=False).reshape(len(column), int(lengths[0]))


def _by_score(ids: np.ndarray, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Each token's experts highest score first (the trace format's order)."""
    if scores is None:
        return ids, None
    order = np.argsort(-scores, axis=-1, kind="stable")
    return np.take_along_axis(ids, order, -1), np.take_along_axis(scores, order, -1)


def _layer_number(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else 0


def from_flame_parquet(paths: list[Path], tokens_per_step: int) -> Trace:
    """A trace from FLAME-MoE-style Parquet files (see the module docstring)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MoesimError("reading Parquet needs pyarrow: pip install 'moesim[trace]'") from None
    files = []
    for path in paths:
        files += sorted(path.glob("*.parquet"), key=_layer_number) if path.is_dir() else [path]
    if not files:
        raise MoesimError(f"{paths[0]}: no .parquet files")
    ids, scores = [], []
    for file in files:
        try:
            table = pq.read_table(file)
        except (OSError, ValueError) as error:
            raise MoesimError(f"{file}: cannot read as Parquet: {error}") from None
        if "indices" not in table.column_names:
            raise MoesimError(f"{file}: no column 'indices' (has {table.column_names})")
        layer_ids = _list_column(table, "indices", str(file), integer=True)
        layer_scores = None
        if "scores" in table.column_names:
            layer_scores = _list_column(table, "scores", str(file), integer=False)
            if layer_scores.shape != layer_ids.shape:
                raise MoesimError(f"{file}: scores and indices differ in length")
        layer_ids, layer_scores = _by_score(layer_ids, layer_scores)
        if "layer" in table.column_names:  # one file, every layer
            layer_of = table.column("layer").to_numpy()
            for layer in np.unique(layer_of):
                ids.append(layer_ids[layer_of == layer])
                scores.append(None if layer_scores is None else layer_scores[layer_of == layer])
        else:
            ids.append(layer_ids)
            scores.append(layer_scores)
    rows = {len(a) for a in ids}
    if len(rows) != 1:
        raise MoesimError(f"{files[0]}: layers hold different token counts {sorted(rows)}")
    stream = np.stack(ids).astype(np.int64)
    weights = None if any(s is None for s in scores) else np.stack(scores).astype(np.float32)
    expert_ids, gate_weights = _cut(stream, weights, tokens_per_step, str(files[0]))
    metadata = {"source": f"flame parquet: {', '.join(str(p) for p in paths)}"}
    return Trace(expert_ids, gate_weights, metadata)


def _megatron_records(path: Path) -> list[tuple]:
    """``(stage, block, mtp_idx, step, layer, rank, top_indices)`` of each record."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MoesimError(f"{path}: cannot read: {error}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            top = np.asarray(record["top_indices"], dtype=np.int64)
            if top.ndim != 2 or 0 in top.shape:
                raise ValueError(f"top_indices has shape {top.shape}, expected [tokens][top_k]")
            records.append(
                (
                    record.get("stage"),
                    record.get("block", "decoder"),
                    record.get("mtp_idx"),
                    int(record["step"]),
                    int(record["layer"]),
                    int(record.get("rank", 0)),
                    top,
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise MoesimError(
                f"{path}:{number}: expected a record with step, layer and top_indices "
                f"({type(error).__name__}: {error})"
            ) from None
    return records


def from_megatron_jsonl(paths: list[Path], tokens_per_step: int | None) -> Trace:
    """A trace from Megatron-Core routing-trace JSONL files (see the module docstring)."""
    records = [record for path in paths for record in _megatron_records(path)]
    if not records:
        raise MoesimError(f"{paths[0]}: no routing records")
    widths = {record[6].shape[1] for record in records}
    if len(widths) != 1:
        raise MoesimError(f"{paths[0]}: records disagree on top-k {sorted(widths)}")
    stages = {record[0] for record in records}
    stage = "pre_dispatch" if "pre_dispatch" in stages else sorted(stages, key=str)[0]
    steps: dict[int, dict[int, list[tuple[int, np.ndarray]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for record_stage, block, mtp, step, layer, rank, top in records:
        if record_stage == stage and block == "decoder" and mtp is None:
            steps[step][layer].append((rank, top))
    layers = sorted({layer for by_layer in steps.values() for layer in by_layer})
    per_layer: list[list[np.ndarray]] = [[] for _ in layers]
    skipped = 0
    for step in sorted(steps):
        chunks = [
            np.concatenate([top for _, top in sorted(steps[step][layer], key=lambda r: r[0])])
            for layer in layers
            if layer in steps[step]
        ]
        if len(chunks) != len(layers) or len({len(chunk) for chunk in chunks}) != 1:
            skipped += 1  # a step missing a layer or a rank (a partial file) is left out
            continue
        for index, chunk in enumerate(chunks):
            per_layer[index].append(chunk)
    if not per_layer or not per_layer[0]:
        raise MoesimError(f"{paths[0]}: no step has every layer's records for the same tokens")
    stream = np.stack([np.concatenate(chunks) for chunks in per_layer])
    ids, _ = _cut(stream, None, tokens_per_step or len(per_layer[0][0]), str(paths[0]))
    source = f"megatron jsonl: {', '.join(str(p) for p in paths)}"
    if skipped:
        source += f" ({skipped} incomplete steps left out)"
    return Trace(ids, None, {"source": source})


def convert(paths: list[Path], format: str | None, tokens_per_step: int | None) -> Trace:
    """Read ``paths`` in ``format`` (guessed from the first path when None)."""
    for path in paths:
        if not path.exists():
            raise MoesimError(f"{path}: no such file or folder")
    if format is None:
        first = paths[0]
        format = "flame" if first.is_dir() or first.suffix == ".parquet" else "megatron"
    if format == "flame":
        return from_flame_parquet(paths, tokens_per_step or 2048)
    if format == "megatron":
        return from_megatron_jsonl(paths, tokens_per_step)
    raise MoesimError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
