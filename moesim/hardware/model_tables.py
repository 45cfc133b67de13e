"""Reading a model card's measured operator tables (``config.ModelTables``): interpolation.

Inside a table's grid, time is interpolated linearly in each axis (bilinearly on a grid), so a
grid point gives its measured value exactly. Beyond the last point it grows along the last
segment (never falling); below the first, along the first segment but never below the first
point's time scaled by size (a third of the smallest measured work takes at least a third of
its time). Zero tokens cost nothing; the callers mask them.
"""

from __future__ import annotations

import numpy as np

from moesim.config.model import ModelSpec
from moesim.config.model_tables import ModelTables

__all__ = ["curve", "grid", "tables_for"]


def tables_for(tables: tuple[ModelTables, ...], model: ModelSpec) -> ModelTables | None:
    """The tables measured for ``model`` (same card name and shapes), else None."""
    return next((t for t in tables if t.applies_to(model)), None)


def _segment(axis: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each ``x``'s segment ``[axis[i], axis[i + 1]]`` (the first or last beyond the grid) and
    its position ``t`` in it (below 0 or above 1 beyond the grid)."""
    i = np.clip(np.searchsorted(axis, x, side="right") - 1, 0, axis.size - 2)
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


def _along(
    axis: np.ndarray, x: np.ndarray, i: np.ndarray, t: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Seconds between ``low`` (at ``axis[i]``) and ``high`` (at ``axis[i + 1]``) at position
    ``t``, with the module's rules beyond the grid."""
    inside = low + t * (high - low)
    above = np.where(high >= low, inside, high)  # never falling beyond the last point
    below = np.maximum(inside, low * x / axis[0])
    return np.where(t > 1, above, np.where(t < 0, below, inside))


def curve(points: list[float], seconds: list[float], x: np.ndarray | float) -> np.ndarray:
    """Seconds at sizes ``x`` (element-wise) on a measured curve."""
    axis, values = np.asarray(points, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    i, t = _segment(axis, x)
    return _along(axis, x, i, t, values[i], values[i + 1])


def grid(
    columns: list[float],
    rows: list[float],
    seconds: list[list[float]],
    x: np.ndarray | float,
    y: np.ndarray | float,
) -> np.ndarray:
    """Seconds at ``(x, y)`` (broadcast) on a measured grid ``seconds[i_row][i_column]``:
    interpolated along the columns in the two neighbouring rows, then between the rows."""
    row_axis = np.asarray(rows, dtype=np.float64)
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    i, t = _segment(row_axis, y)
    low = np.empty(x.shape)
    high = np.empty(x.shape)
    for row in np.unique(i):
        at = i == row
        low[at] = curve(columns, seconds[row], x[at])
        high[at] = curve(columns, seconds[row + 1], x[at])
    return _along(row_axis, y, i, t, low, high)
