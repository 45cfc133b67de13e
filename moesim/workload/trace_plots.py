"""Pictures of a trace's statistics: popularity curves and co-activation heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moesim.workload.trace_stats import LayerStats

__all__ = ["MAX_HEATMAPS", "plot_stats"]

MAX_HEATMAPS = 16  # layers drawn as co-activation heatmaps (the first ones)


def plot_stats(stats: list[LayerStats], out: Path, title: str) -> list[Path]:
    """Write ``popularity.png`` and ``coactivation.png`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(7, 5))
    colours = plt.cm.viridis(np.linspace(0, 1, max(len(stats), 1)))
    for layer, colour in zip(stats, colours, strict=True):
        share = np.sort(np.asarray(layer.popularity))[::-1]
        ranks = np.arange(1, share.size + 1)
        axis.loglog(
            ranks[share > 0],
            share[share > 0],
            color=colour,
            linewidth=1,
            label=f"layer {layer.layer} (s={layer.zipf_exponent:.2f})",
        )
    from matplotlib.ticker import ScalarFormatter

    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.set_xlabel("expert rank by popularity")
    axis.set_ylabel("share of the layer's token-expert assignments")
    axis.set_title(f"{title}: expert popularity per MoE layer")
    if len(stats) <= 12:
        axis.legend(fontsize=7)
    figure.tight_layout()
    popularity = out / "popularity.png"
    figure.savefig(popularity, dpi=110)
    plt.close(figure)

    shown = stats[:MAX_HEATMAPS]
    columns = int(np.ceil(np.sqrt(len(shown)))) or 1
    rows = int(np.ceil(len(shown) / columns)) or 1
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3 * rows), squeeze=False)
    for axis, layer in zip(axes.ravel(), shown, strict=False):
        image = axis.imshow(np.asarray(layer.coactivation), cmap="magma")
        axis.set_title(f"layer {layer.layer}", fontsize=9)
        axis.set_xlabel("expert", fontsize=8)
        axis.set_ylabel("expert", fontsize=8)
        figure.colorbar(image, ax=axis, fraction=0.046)
    for axis in axes.ravel()[len(shown) :]:
        axis.axis("off")
    figure.suptitle(f"{title}: co-activation (share of tokens choosing both experts)")
    figure.tight_layout()
    heatmaps = out / "coactivation.png"
    figure.savefig(heatmaps, dpi=110)
    plt.close(figure)
    return [popularity, heatmaps]
