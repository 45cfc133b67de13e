"""``moesim plot``: line or bar charts of a sweep's result store, PNG or SVG.

Rows whose status is not ``ok`` (a configuration that does not fit, an error) have no metrics
and are left out of the lines; ``--hue`` draws one line (or bar group) per value of a column,
``--facet`` one panel per value of another.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from moesim.errors import MoesimError

__all__ = ["axis_label", "plot_results", "read_results"]

_UNITS = (  # column suffix → unit, first match wins
    ("_tokens_per_s", "tokens/s"),
    ("_bytes_per_device_max", "bytes, busiest device"),
    ("_bytes", "bytes"),
    ("_s", "s"),
)


def axis_label(column: str) -> str:
    """``latency_s.p50`` → ``latency p50 (s)``: the column's words and its unit."""
    parts = column.split(".")
    unit = ""
    for index, part in enumerate(parts):
        for suffix, name in _UNITS:
            if not unit and part.endswith(suffix):
                parts[index], unit = part[: -len(suffix)], name
    words = " ".join(part.replace("_", " ") for part in parts if part)
    return f"{words} ({unit})" if unit else words


def read_results(folder: str | Path) -> dict[str, list[Any]]:
    """The columns of ``folder/results.parquet`` (or of a parquet file given directly)."""
    path = Path(folder)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.is_file():
        raise MoesimError(f"{path}: no result store (run moesim sweep ... --out first)")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MoesimError("plots of sweeps need pyarrow: pip install 'moesim[sweep]'") from None
    return pq.read_table(path).to_pydict()


def _column(table: dict[str, list[Any]], name: str | None, option: str) -> list[Any] | None:
    if name is None:
        return None
    if name not in table:
        shown = ", ".join(sorted(table))
        raise MoesimError(f"{option} {name}: no such column (the store has: {shown})")
    return table[name]


def _key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def plot_results(
    folder: str | Path,
    x: str,
    y: str,
    *,
    hue: str | None = None,
    facet: str | None = None,
    kind: Literal["line", "bar"] = "line",
    out: str | Path | None = None,
) -> Path:
    """Draw ``y`` against ``x`` from a result store; returns the image written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = read_results(folder)
    xs, ys = _column(table, x, "--x"), _column(table, y, "--y")
    hues = _column(table, hue, "--hue") or [None] * len(xs)
    facets = _column(table, facet, "--facet") or [None] * len(xs)
    status = table.get("status", ["ok"] * len(xs))
    panels: dict[Any, dict[Any, list[tuple[Any, float]]]] = defaultdict(lambda: defaultdict(list))
    for xv, yv, hv, fv, ok in zip(xs, ys, hues, facets, status, strict=True):
        if ok == "ok" and isinstance(yv, int | float) and not math.isnan(yv):
            panels[fv][hv].append((xv, float(yv)))
    if not panels:
        raise MoesimError(f"--y {y}: no point has a value (every row failed or does not fit)")
    keys = sorted(panels, key=_key)
    figure, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        series = panels[key]
        categories = sorted({px for points in series.values() for px, _ in points}, key=_key)
        numeric = all(isinstance(c, int | float) for c in categories)
        width = 0.8 / max(len(series), 1)
        for index, (name, points) in enumerate(sorted(series.items(), key=lambda i: _key(i[0]))):
            points.sort(key=lambda p: _key(p[0]))
            label = None if name is None else f"{hue} = {name}"
            if kind == "bar":
                slots = [categories.index(px) + index * width for px, _ in points]
                axis.bar(slots, [py for _, py in points], width, label=label)
            elif numeric:
                axis.plot([px for px, _ in points], [py for _, py in points], "o-", label=label)
            else:
                slots = [categories.index(px) for px, _ in points]
                axis.plot(slots, [py for _, py in points], "o-", label=label)
        if kind == "bar" or not numeric:
            shift = (len(series) - 1) * width / 2 if kind == "bar" else 0
            axis.set_xticks([i + shift for i in range(len(categories))])
            axis.set_xticklabels([str(c) for c in categories], rotation=30, ha="right")
        axis.set_xlabel(axis_label(x))
        axis.set_ylabel(axis_label(y))
        if facet is not None:
            axis.set_title(f"{facet} = {key}")
        if hue is not None:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    target = Path(out) if out else Path(folder) / f"{y}-by-{x}.png".replace("/", "_")
    if target.suffix.lower() not in (".png", ".svg"):
        raise MoesimError(f"--out {target}: expected a .png or .svg file")
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
