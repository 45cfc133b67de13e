"""``moesim plot``: line or bar charts of a sweep's result store, PNG or SVG.

Rows whose status is not ``ok`` (a configuration that does not fit, an error) have no metrics
and are left out; ``--hue`` draws one line (or bar group) per value of a column, ``--facet``
one panel per value of another. Where several points share an x (and hue and facet) because
other swept columns vary there, the line is their mean with a band (bars: error bars) from
the smallest to the largest, and the chart and the returned ``Plot`` name the columns that
varied: never a zig-zag through unrelated points, never bars drawn over each other.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from moesim.errors import MoesimError
from moesim.sweep.store import PARAMS_METADATA

__all__ = ["Plot", "axis_label", "plot_results", "read_results"]

_UNITS = (  # column suffix → unit, first match wins
    ("_tokens_per_s", "tokens/s"),
    ("_bytes_per_device_max", "bytes, busiest device"),
    ("_bytes", "bytes"),
    ("_s", "s"),
)


@dataclass(frozen=True)
class Plot:
    """The image written, the most points averaged at one x, and the swept columns that
    varied among them (``None``: the store does not list its swept columns)."""

    path: Path
    points_per_x: int
    varying: list[str] | None


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


def _store_file(store: str | Path) -> Path:
    path = Path(store)
    return path / "results.parquet" if path.is_dir() else path


def read_results(store: str | Path) -> tuple[dict[str, list[Any]], list[str] | None]:
    """The columns of ``store/results.parquet`` (or of a parquet file given directly) and
    the swept columns, when the store lists them."""
    path = _store_file(store)
    if not path.is_file():
        raise MoesimError(f"{path}: no result store (run moesim sweep ... --out first)")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MoesimError("plots of sweeps need pyarrow: pip install 'moesim[sweep]'") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several kinds for a file that is not parquet
        raise MoesimError(f"{path}: not a result store ({type(error).__name__})") from None
    listed = (table.schema.metadata or {}).get(PARAMS_METADATA)
    return table.to_pydict(), None if listed is None else json.loads(listed)


def _column(table: dict[str, list[Any]], name: str | None, option: str) -> list[Any] | None:
    if name is None:
        return None
    if name not in table:
        shown = ", ".join(sorted(table))
        raise MoesimError(f"{option} {name}: no such column (the store has: {shown})")
    return table[name]


def _key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


Groups = dict[Any, dict[Any, dict[Any, list[int]]]]  # facet → hue → x → rows


def _group(table, x, y, hue, facet) -> Groups:
    xs, ys = _column(table, x, "--x"), _column(table, y, "--y")
    hues = _column(table, hue, "--hue") or [None] * len(xs)
    facets = _column(table, facet, "--facet") or [None] * len(xs)
    status = table.get("status", ["ok"] * len(xs))
    groups: Groups = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row, (xv, yv, hv, fv, ok) in enumerate(zip(xs, ys, hues, facets, status, strict=True)):
        number = isinstance(yv, int | float) and not isinstance(yv, bool)
        if ok == "ok" and number and math.isfinite(yv) and xv is not None:
            groups[fv][hv][xv].append(row)
    if not groups:
        raise MoesimError(f"--y {y}: no point has a value (every row failed or does not fit)")
    return groups


def _varying(table, groups: Groups, params: list[str] | None, shown: set[str]) -> list[str]:
    """The swept columns, other than those drawn, whose value differs at one x."""
    if params is None:
        return []
    rows = [r for hues in groups.values() for xs in hues.values() for r in xs.values()]
    return [
        name
        for name in params
        if name not in shown and name in table
        if any(len({json.dumps(table[name][i]) for i in group}) > 1 for group in rows)
    ]


def _panel(axis: Any, series: dict, ys: list, kind: str, hue: str | None, band: bool) -> None:
    """One panel: a line (or bar group) per hue of the mean at each x, with the spread."""
    categories = sorted({px for xs in series.values() for px in xs}, key=_key)
    numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in categories)
    width = 0.8 / len(series)
    for index, (name, by_x) in enumerate(sorted(series.items(), key=lambda i: _key(i[0]))):
        points = sorted(by_x.items(), key=lambda item: _key(item[0]))
        values = [[ys[row] for row in rows] for _, rows in points]
        mean = [sum(v) / len(v) for v in values]
        low, high = [min(v) for v in values], [max(v) for v in values]
        label = None if name is None else f"{hue} = {name}"
        if kind == "bar":
            slots = [categories.index(px) + index * width for px, _ in points]
            spread = [
                [m - lo for m, lo in zip(mean, low, strict=True)],
                [hi - m for m, hi in zip(mean, high, strict=True)],
            ]
            axis.bar(slots, mean, width, yerr=spread if band else None, capsize=3, label=label)
            continue
        where = [px if numeric else categories.index(px) for px, _ in points]
        (line,) = axis.plot(where, mean, "o-", label=label)
        if band:
            axis.fill_between(where, low, high, color=line.get_color(), alpha=0.2)
    if kind == "bar" or not numeric:
        shift = (len(series) - 1) * width / 2 if kind == "bar" else 0
        axis.set_xticks([i + shift for i in range(len(categories))])
        axis.set_xticklabels([str(c) for c in categories], rotation=30, ha="right")


def plot_results(
    store: str | Path,
    x: str,
    y: str,
    *,
    hue: str | None = None,
    facet: str | None = None,
    kind: Literal["line", "bar"] = "line",
    out: str | Path | None = None,
) -> Plot:
    """Draw ``y`` against ``x`` from a result store (its folder or its ``results.parquet``);
    the default image goes beside the store's table."""
    target = Path(out) if out else _store_file(store).parent / f"{y}-by-{x}.png".replace("/", "_")
    if target.suffix.lower() not in (".png", ".svg"):
        raise MoesimError(f"--out {target}: expected a .png or .svg file")
    table, params = read_results(store)
    groups = _group(table, x, y, hue, facet)
    varying = _varying(table, groups, params, {x, hue, facet})
    most = max(len(r) for hues in groups.values() for xs in hues.values() for r in xs.values())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(groups, key=_key)
    figure, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        _panel(axis, groups[key], table[y], kind, hue, most > 1)
        axis.set_xlabel(axis_label(x))
        axis.set_ylabel(axis_label(y) + (" (mean, min to max)" if most > 1 else ""))
        if facet is not None:
            axis.set_title(f"{facet} = {key}")
        if hue is not None:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    if most > 1:
        over = ", ".join(varying) if varying else "columns the store does not list"
        figure.suptitle(f"up to {most} points per x, varying {over}", fontsize=9)
    figure.tight_layout()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=110)
    except OSError as error:
        raise MoesimError(f"--out {target}: cannot write: {error.strerror}") from None
    finally:
        plt.close(figure)
    return Plot(target, most, varying if params is not None else None)
