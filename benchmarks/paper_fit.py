"""The seed paper's unstated parameters fitted on its one-node claims, its multi-node claims
predicted with them, how each disagreeing claim moves with each assumption, and the gain of
dynamic over static gating against node count for a few skews (``validation/paper-scaling.png``).

    python benchmarks/paper_fit.py [--workers 1] [--runs runs/paper]

prints the fit; ``benchmarks/paper_report.py`` runs it and writes it into ``validation/paper.md``.
The fit is a coordinate search over small grids minimising the median ``|ln(moesim / paper)|``
of the one-node claims (the mean breaks ties); nothing is tuned per claim.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from paper_claims import Claim, Rows, claims, count, gating_gains, objective
from paper_runs import ROOT, Assumptions, Runner

SKEWS = (0.0, 0.5, 1.0, 1.5, 2.0)
SKEW = ("lm_skew", "encoder_skew", "decoder_skew")
LOCALITY = ("locality", "decoder_locality")
Grid = dict[str, tuple[tuple[str, ...], tuple[float, ...]]]  # label -> (fields, values)
# What the fit moves: a label moves all its fields to the same value, so one routing skew and one
# locality hold for every stack (a skew per stack would be fitted on its own stack's claims).
FIT_GRID: Grid = {
    "LM tokens / sentence": (("lm_tokens",), (256, 512, 768, 1024, 1536, 2048)),
    "MT tokens / sentence": (("mt_tokens",), (16, 32, 64, 128, 256)),
    "skew": (SKEW, SKEWS),
    "locality": (LOCALITY, (0.5, 0.9, 1.0)),
}
# One node has no inter-node link: its bandwidth stays at the datasheet value.
NOT_IDENTIFIABLE = ("network_gb_per_s",)
PASSES = 3  # coordinate sweeps at most; the search stops earlier when one changes nothing
# Sensitivity: each assumption over its plausible range, the others at their fitted values.
RANGES: Grid = {
    "LM tokens / sentence": (("lm_tokens",), (256, 512, 1024, 2048)),
    "MT tokens / sentence": (("mt_tokens",), (16, 32, 128, 256)),
    "skew": (SKEW, SKEWS),
    "locality": (LOCALITY, (0.0, 0.5, 1.0)),
    "inter-node GB/s per GPU": (("network_gb_per_s",), (3.0, 6.25, 12.5, 25.0)),
}
PLOT = ROOT / "validation" / "paper-scaling.png"
NODES = (1, 2, 4)
Score = tuple[float, float]


def _typed(field: str, value: float) -> float | int:
    return int(value) if field.endswith("tokens") else float(value)


def moved(assumptions: Assumptions, names: Sequence[str], value: float) -> Assumptions:
    """``assumptions`` with every field of ``names`` at ``value``."""
    return assumptions.replace(**{name: _typed(name, value) for name in names})


def coordinate_search(
    evaluate: Callable[[Assumptions], Score],
    start: Assumptions,
    grid: Grid,
    passes: int = PASSES,
) -> tuple[Assumptions, Score]:
    """Move one entry of ``grid`` at a time to its best value (a strictly lower score wins, so
    the start and earlier values win ties), until a sweep over all entries changes nothing."""
    best, score = start, evaluate(start)
    for _ in range(passes):
        before = best
        for names, values in grid.values():
            for value in values:
                candidate = moved(best, names, value)
                if candidate != best and (got := evaluate(candidate)) < score:
                    best, score = candidate, got
        if best == before:
            break
    return best, score


@dataclass(frozen=True)
class Fit:
    """The datasheet and fitted assumptions, their claims, their one-node scores and the
    seconds the fit and its predictions took."""

    datasheet: Assumptions
    fitted: Assumptions
    datasheet_claims: list[Claim]
    fitted_claims: list[Claim]
    datasheet_score: Score
    fitted_score: Score
    seconds: float


def fit(runner: Runner) -> Fit:
    """Fit on the one-node claims, then predict every claim with the fitted values."""
    began = time.perf_counter()

    def evaluate(assumptions: Assumptions) -> Score:
        return objective(claims(runner.rows(assumptions, multi_node=False), multi_node=False))

    datasheet = Assumptions()
    fitted, score = coordinate_search(evaluate, datasheet, FIT_GRID)
    return Fit(
        datasheet,
        fitted,
        claims(runner.rows(datasheet)),
        claims(runner.rows(fitted)),
        evaluate(datasheet),
        score,
        time.perf_counter() - began,
    )


def sensitivity(runner: Runner, fitted: Assumptions) -> dict[str, list[list[Claim]]]:
    """Per column of ``RANGES``: the claims at each value of its range."""
    return {
        column: [claims(runner.rows(moved(fitted, names, value))) for value in values]
        for column, (names, values) in RANGES.items()
    }


def _cell(claim_at: list[Claim], values: Sequence[float]) -> str:
    """A ratio claim's range over the values (the arrow: from the lowest value to the
    highest), a claim of several numbers at the lowest and highest value, or the values at
    which an ordering holds."""
    if not claim_at[0].ratios:
        agree = [f"{v:g}" for v, c in zip(values, claim_at, strict=True) if c.agree]
        return "never" if not agree else "all" if len(agree) == len(values) else ", ".join(agree)
    if len(claim_at[0].ratios) > 1:
        return f"{claim_at[0].moesim} → {claim_at[-1].moesim}"
    ratios = [c.ratios[0] for c in claim_at]
    arrow = "↑" if ratios[-1] > ratios[0] * 1.02 else "↓" if ratios[-1] < ratios[0] / 1.02 else "="
    return f"{min(ratios):.2f}–{max(ratios):.2f} {arrow}"


def sensitivity_table(fitted_claims: list[Claim], by_column: dict[str, list[list[Claim]]]) -> str:
    """One row per claim that disagrees at the fitted values, one column per assumption."""
    head = ["claim", "fitted"] + [
        f"{column} ({values[0]:g}–{values[-1]:g})" for column, (_, values) in RANGES.items()
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for i, claim in enumerate(fitted_claims):
        if claim.agree:
            continue
        here = f"{claim.ratios[0]:.2f}" if len(claim.ratios) == 1 else claim.moesim
        cells = [_cell([at[i] for at in by_column[c]], RANGES[c][1]) for c in RANGES]
        lines.append(f"| {claim.name} | {here} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def busiest_shares(rows: Rows) -> dict[tuple[str, int], float]:
    """The paper's Avg Max Load (§VII: the busiest GPU's share of a layer's expert tokens,
    averaged) under dynamic gating and contiguous placement, per stack and node count."""
    out = {}
    for stack, name in (("LM", "load-balancing"), ("MT encoder", "mt-load-balancing")):
        for row in rows[name]:
            if str(row["policies.placement"]).startswith("contiguous"):
                out[stack, row["cluster.nodes"]] = row["placement.avg_max_load"]
    return out


def skew_study(runner: Runner, fitted: Assumptions) -> dict[float, dict[tuple[str, int], float]]:
    """Per skew of ``SKEWS`` (the rest fitted): the gain of dynamic over static per (stack,
    node count), and the Avg Max Load per ("... load", node count)."""
    study = {}
    for skew in SKEWS:
        rows = runner.rows(moved(fitted, SKEW, skew))
        shares = {(f"{s} load", n): v for (s, n), v in busiest_shares(rows).items()}
        study[skew] = gating_gains(rows, NODES) | shares
    return study


def plot(
    gains: dict[float, dict[tuple[str, int], float]], fitted: Assumptions, path: Path = PLOT
) -> None:
    """Gain against node count per skew, one panel per stack, the paper's points marked (its
    multi-node maxima drawn at 4 nodes, where the paper's text places them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    paper = {"LM": (6.21, 11.55), "MT encoder": (5.75, 10.98), "MT decoder": (2.58, 5.71)}
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharex=True)
    for axis, (stack, (single, multi)) in zip(axes, paper.items(), strict=True):
        for skew, by in gains.items():
            fit = skew == fitted.lm_skew
            axis.plot(
                NODES,
                [by[stack, n] for n in NODES],
                "o-",
                linewidth=3 if fit else 1.5,
                label=f"skew {skew:g}" + (" (fitted)" if fit else ""),
            )
        axis.plot([1, 4], [single, multi], "k*--", markersize=14, label="paper")
        axis.set(title=stack, xlabel="nodes (8 V100 each)", xticks=NODES, yscale="log")
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("max throughput, dynamic / static")
    axes[0].legend(fontsize=8)
    figure.suptitle(
        "Dynamic gating's gain over static gating: routing skew varied, "
        f"{fitted.lm_tokens} / {fitted.mt_tokens} tokens per LM / MT sentence, "
        f"{fitted.network_gb_per_s:g} GB/s per GPU between nodes"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def describe(assumptions: Assumptions) -> str:
    return ", ".join(f"{f.name}={getattr(assumptions, f.name)}" for f in fields(assumptions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "paper")
    args = parser.parse_args()
    result = fit(Runner(args.runs, args.workers))
    print(f"datasheet: {describe(result.datasheet)}; one-node score {result.datasheet_score}")
    print(f"fitted:    {describe(result.fitted)}; one-node score {result.fitted_score}")
    for label, found in (("datasheet", result.datasheet_claims), ("fitted", result.fitted_claims)):
        print(f"{label}: one node {count(found, False)}, multi-node {count(found, True)}")
    print(f"{result.seconds:.0f} s")


if __name__ == "__main__":
    main()
