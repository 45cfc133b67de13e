"""The result store of a sweep: ``OUT/results.parquet``, one row per point.

Each finished point is written at once to its own small file, ``OUT/parts/<id>.parquet``
(atomically), so a sweep killed at any moment loses no finished row; a point that failed is
``OUT/parts/<id>.error.parquet`` and runs again on the next resume. ``results.parquet`` holds
the rows of the sweep file's points only, each with the point's number and parameters as this
sweep file names them, rewritten (atomically) whenever the sweep ends. A part is keyed by the
point's id (see ``identity``), so a rerun runs only the points whose result is not there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moesim.errors import MoesimError
from moesim.files import publish
from moesim.sweep.identity import ResolvedPoint
from moesim.sweep.point import label

__all__ = ["PARAMS_METADATA", "ResultStore"]

PARAMS_METADATA = b"moesim.params"  # the swept columns, as a JSON list, in the table's schema
_ERROR = ".error"


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MoesimError("sweeps need pyarrow: pip install 'moesim[sweep]'") from None
    return pa, pq


def _temporary(folder: Path) -> Path:
    """A fresh hidden path in ``folder`` to write before publishing."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    os.close(handle)
    return Path(name)


def _write(table: Any, target: Path) -> None:
    _, pq = _pyarrow()
    temporary = _temporary(target.parent)
    try:
        pq.write_table(table, temporary)
        publish(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _parameters(points: Sequence[ResolvedPoint]) -> list[dict[str, Any]]:
    """Each point's parameters as cells; a column whose values mix types holds text."""
    cells = [{key: label(value) for key, value in p.point.params} for p in points]
    kinds: dict[str, set[type]] = {}
    for row in cells:
        for key, value in row.items():
            if value is not None:
                kinds.setdefault(key, set()).add(type(value))
    mixed = {key for key, types in kinds.items() if len(types) > 1 and types != {int, float}}
    return [
        {k: (None if v is None else str(v)) if k in mixed else v for k, v in row.items()}
        for row in cells
    ]


class ResultStore:
    def __init__(self, out: Path, *, fresh: bool = False) -> None:
        if out.exists() and not out.is_dir():
            raise MoesimError(f"--out {out}: exists and is not a folder")
        self.out = out
        self.parts = out / "parts"
        if fresh:
            shutil.rmtree(self.parts, ignore_errors=True)
            (out / "results.parquet").unlink(missing_ok=True)
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MoesimError(f"--out {out}: cannot create: {error.strerror}") from None

    def done(self) -> set[str]:
        """Ids of the points with a result (an error is not one)."""
        return {p.stem for p in self.parts.glob("*.parquet") if not p.stem.endswith(_ERROR)}

    def failed(self) -> set[str]:
        """Ids of the points whose last run failed."""
        return {p.stem[: -len(_ERROR)] for p in self.parts.glob(f"*{_ERROR}.parquet")}

    def add(self, row: dict[str, Any]) -> None:
        """Write a point's row (``point_id``, ``status``, ``error``, metrics) at once."""
        pa, _ = _pyarrow()
        error = row["status"] == "error"
        name = f"{row['point_id']}{_ERROR if error else ''}.parquet"
        _write(pa.Table.from_pylist([row]), self.parts / name)
        if not error:
            (self.parts / f"{row['point_id']}{_ERROR}.parquet").unlink(missing_ok=True)

    def compact(self, points: Sequence[ResolvedPoint]) -> Path:
        """Write ``results.parquet``: the row of each of ``points`` that has one, in point
        order, with its number and parameters; a part of a point not among them stays on
        disk but out of the table."""
        pa, pq = _pyarrow()
        done, failed = self.done(), self.failed()
        tables = []
        for resolved, cells in zip(points, _parameters(points), strict=True):
            if resolved.id in done:
                part = self.parts / f"{resolved.id}.parquet"
            elif resolved.id in failed:
                part = self.parts / f"{resolved.id}{_ERROR}.parquet"
            else:
                continue
            head = {"point": resolved.point.index, "point_id": resolved.id} | cells
            row = pq.read_table(part).to_pylist()[0]
            tables.append(pa.Table.from_pylist([head | row]))
        target = self.out / "results.parquet"
        if not tables:
            target.unlink(missing_ok=True)
            return target
        table = pa.concat_tables(tables, promote_options="permissive")
        params = sorted({key for p in points for key, _ in p.point.params})
        table = table.replace_schema_metadata({PARAMS_METADATA: json.dumps(params).encode()})
        _write(table, target)
        return target
