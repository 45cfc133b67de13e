"""``pareto.png``: output tokens/s per GPU against tokens/s per user, one point per serving run of
the capacity searches (filled where the run met the SLO), the screen's estimates of the
configurations it did not simulate, the TPOT target and the frontier of the runs that met it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.advise.outputs import atomic, probes
from moesim.advise.search import Search

__all__ = ["frontier", "write_pareto"]


def frontier(x_N: np.ndarray, y_N: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both axes (higher is better), by x."""
    order = np.argsort(-x_N, kind="stable")
    keep, best = [], -np.inf
    for i in order:
        if y_N[i] > best:
            keep.append(i)
            best = y_N[i]
    return np.array(keep[::-1], dtype=int)


def write_pareto(path: Path, search: Search) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5.0))
    devices = sorted({c.device for c in search.candidates if c.device})
    colours = {d: f"C{i}" for i, d in enumerate(devices)}
    met_x, met_y = [], []
    for candidate in search.candidates:
        runs = probes(candidate)
        if runs:
            for run in runs:
                x, y = run["tokens_per_s_per_user"], run["tokens_per_s_per_gpu"]
                face = colours[candidate.device] if run["slo_met"] else "none"
                axes.scatter(x, y, s=22, facecolors=face, edgecolors=colours[candidate.device])
                if run["slo_met"]:
                    met_x.append(x)
                    met_y.append(y)
        elif candidate.estimate is not None and candidate.estimate.capacity_rps > 0:
            estimate = candidate.estimate
            axes.scatter(
                estimate.tokens_per_s_per_user,
                estimate.tokens_per_s_per_gpu,
                marker="x",
                s=14,
                color="0.6",
            )
    if met_x:
        x_N, y_N = np.array(met_x), np.array(met_y)
        edge = frontier(x_N, y_N)
        axes.step(x_N[edge], y_N[edge], where="post", color="k", lw=1.2, label="SLO frontier")
    tpot = search.advice.slo.tpot_s
    if tpot is not None:
        axes.axvline(1.0 / tpot, color="r", ls="--", lw=1, label=f"TPOT target ({tpot:g} s)")
    if search.ranking:
        best = search.ranking[0]
        run = next(r for r in probes(best) if r["rate"] == best.simulated["at_rate_rps"])
        axes.scatter(
            run["tokens_per_s_per_user"],
            run["tokens_per_s_per_gpu"],
            marker="*",
            s=220,
            color="gold",
            edgecolors="k",
            zorder=5,
            label="recommended",
        )
    for device in devices:
        axes.scatter([], [], color=colours[device], label=device)
    axes.scatter([], [], facecolors="none", edgecolors="0.3", label="run missed the SLO")
    axes.scatter([], [], marker="x", color="0.6", label="screen estimate (not simulated)")
    axes.set_xlabel("output tokens/s per user (1 / mean TPOT)")
    axes.set_ylabel("output tokens/s per GPU")
    axes.set_title(f"moesim advise: {search.advice.scenario.model.name}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)
