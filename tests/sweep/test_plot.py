"""Plots of a result store: points sharing an x are averaged, with what varied named; the
documented forms of the store argument work; the shipped example sweep runs and plots."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from matplotlib.collections import PolyCollection

from moesim.cli import main
from moesim.errors import MoesimError
from moesim.sweep import load_sweep, run_sweep
from moesim.sweep.plot import plot_results
from tests.conftest import SCENARIOS
from tests.sweep.helpers import write_sweep

GATING = SCENARIOS / "sweeps" / "gating.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Batch x gating x two seeds: two points at each (gating, batch)."""
    folder = tmp_path_factory.mktemp("store")
    grid = {
        "workload.batch_size": [4, 8],
        "policies.gating": [{"name": "dynamic"}, {"name": "static"}],
        "seed": [1, 2],
    }
    run_sweep(write_sweep(folder, {"grid": grid}), folder / "out", workers=1)
    return folder / "out"


def _drawn(monkeypatch) -> list:
    """The figures plot_results draws, kept open for inspection."""
    import matplotlib.pyplot as plt

    figures: list = []
    monkeypatch.setattr(plt, "close", figures.append)
    return figures


def test_points_sharing_an_x_are_their_mean_with_a_band_and_the_varying_column(
    store, tmp_path, monkeypatch
):
    figures = _drawn(monkeypatch)
    plot = plot_results(
        store,
        "workload.batch_size",
        "throughput_tokens_per_s",
        hue="policies.gating",
        out=tmp_path / "p.png",
    )
    assert (plot.points_per_x, plot.varying) == (2, ["seed"])
    rows = pq.read_table(store / "results.parquet").to_pylist()
    (axis,) = figures[0].axes
    for line in axis.get_lines():
        gating = line.get_label().removeprefix("policies.gating = ")
        ours = [r for r in rows if r["policies.gating"] == gating]
        means = [
            sum(r["throughput_tokens_per_s"] for r in ours if r["workload.batch_size"] == b) / 2
            for b in (4, 8)
        ]
        assert list(line.get_xdata()) == [4, 8] and list(line.get_ydata()) == pytest.approx(means)
    bands = [c for c in axis.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    assert "varying seed" in figures[0].texts[0].get_text()


def test_a_column_drawn_as_hue_is_not_averaged_over(store, tmp_path, monkeypatch):
    figures = _drawn(monkeypatch)
    plot = plot_results(
        store,
        "workload.batch_size",
        "latency_s.p50",
        hue="seed",
        facet="policies.gating",
        out=tmp_path / "p.svg",
    )
    assert (plot.points_per_x, plot.varying) == (1, [])
    assert len(figures[0].axes) == 2 and not figures[0].texts
    assert all(len(axis.get_lines()) == 2 for axis in figures[0].axes)


def test_bars_of_points_sharing_an_x_are_one_bar_each_with_error_bars(store, tmp_path, monkeypatch):
    figures = _drawn(monkeypatch)
    plot_results(
        store,
        "workload.batch_size",
        "throughput_tokens_per_s",
        hue="policies.gating",
        kind="bar",
        out=tmp_path / "b.png",
    )
    (axis,) = figures[0].axes
    lefts = [round(patch.get_x(), 6) for patch in axis.patches]
    assert len(lefts) == 4 and len(set(lefts)) == 4  # no bar drawn over another


def test_plot_accepts_the_results_file_and_writes_beside_it(store, capsys):
    code = main(
        [
            "plot",
            str(store / "results.parquet"),
            "--x",
            "workload.batch_size",
            "--y",
            "throughput_tokens_per_s",
            "--hue",
            "policies.gating",
        ]
    )
    err = capsys.readouterr().err
    image = store / "throughput_tokens_per_s-by-workload.batch_size.png"
    assert code == 0 and image.read_bytes()[:4] == b"\x89PNG"
    assert "up to 2 points share an x" in err and "they differ in seed" in err


def test_a_file_that_is_not_a_store_is_one_line(tmp_path):
    bad = tmp_path / "results.parquet"
    bad.write_text("no")
    with pytest.raises(MoesimError, match="not a result store"):
        plot_results(bad, "a", "b")


def test_the_readmes_example_sweep_is_shipped_and_runs(tmp_path, capsys):
    sweep = load_sweep(GATING)
    assert (
        len(sweep.points) == 4 * 2 * 2 * 3 and sweep.base.resolve() == SCENARIOS / "quickstart.yaml"
    )
    out = tmp_path / "gating"
    assert main(["sweep", str(GATING), "--out", str(out), "--workers", "1"]) == 0
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 48 and {r["status"] for r in rows} == {"ok"}
    for row in rows:  # dynamic gating drops nothing; capacity factor 1.0 drops or pads
        static = row["policies.gating"].startswith("static")
        assert (row["tokens.dropped"] + row["tokens.padded"] > 0) == static
    args = ["plot", str(out), "--x", "workload.batch_size", "--y", "throughput_tokens_per_s"]
    assert main([*args, "--hue", "policies.gating"]) == 0
    assert "they differ in cluster.nodes, workload.routing.skew" in capsys.readouterr().err
