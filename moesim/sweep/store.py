"""The result store of a sweep: ``OUT/results.parquet``, one row per point.

Each finished point is written at once to its own small file, ``OUT/parts/<id>.parquet``
(atomically), so a sweep killed at any moment loses no finished row; ``results.parquet`` is
the union of the parts, rewritten (atomically) whenever the sweep ends or resumes. A rerun
with the same ``OUT`` runs only the points without a part.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from moesim.errors import MoesimError
from moesim.files import publish

__all__ = ["ResultStore"]


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


class ResultStore:
    def __init__(self, out: Path, *, fresh: bool = False) -> None:
        if out.exists() and not out.is_dir():
            raise MoesimError(f"--out {out}: exists and is not a folder")
        self.out = out
        self.parts = out / "parts"
        if fresh:
            shutil.rmtree(self.parts, ignore_errors=True)
            (out / "results.parquet").unlink(missing_ok=True)
        self.parts.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        """Ids of the points with a row."""
        return {path.stem for path in self.parts.glob("*.parquet")}

    def add(self, row: dict[str, Any]) -> None:
        pa, pq = _pyarrow()
        temporary = _temporary(self.parts)
        try:
            pq.write_table(pa.Table.from_pylist([row]), temporary)
            publish(temporary, self.parts / f"{row['point_id']}.parquet")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def compact(self, ids: set[str] | None = None) -> Path:
        """Write ``results.parquet`` from the parts (of the points ``ids``, when given: a part
        of a point the sweep file no longer has stays on disk but out of the table), rows in
        point order."""
        pa, pq = _pyarrow()
        parts = sorted(self.parts.glob("*.parquet"))
        tables = [pq.read_table(path) for path in parts if ids is None or path.stem in ids]
        target = self.out / "results.parquet"
        if not tables:
            return target
        table = pa.concat_tables(tables, promote_options="permissive")
        table = table.sort_by("point")
        temporary = _temporary(self.out)
        try:
            pq.write_table(table, temporary)
            publish(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target
