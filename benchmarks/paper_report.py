"""Runs the seed paper's experiments (``scenarios/paper/*.yaml``) and writes
``validation/paper.md``: moesim's predictions beside the paper's measurements, under the
datasheet assumptions and under the paper's unstated parameters fitted on its one-node claims
(``benchmarks/paper_fit.py``), with the sensitivity table and ``validation/paper-scaling.png``.

    python benchmarks/paper_report.py [--workers 1] [--runs runs/paper]

Points resume: a rerun only simulates the points missing from ``--runs``. A batch is feasible
when the predicted peak memory fits the V100's 32 GB.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from paper_claims import Claim, Rows, count, fastest, table
from paper_fit import (
    FIT_GRID,
    NODES,
    NOT_IDENTIFIABLE,
    PLOT,
    RANGES,
    SKEWS,
    Fit,
    fit,
    plot,
    sensitivity,
    sensitivity_table,
    skew_study,
)
from paper_runs import ROOT, Assumptions, Runner


def _value(assumptions: Assumptions, names: tuple[str, ...]) -> str:
    """The fields' value, or each field's (``/``-separated) where they differ."""
    values = dict.fromkeys(f"{getattr(assumptions, name):g}" for name in names)
    return " / ".join(values)


def _values(result: Fit) -> str:
    lines = ["| parameter | datasheet | fitted | searched over |", "|---|---:|---:|---|"]
    for label, (names, grid) in FIT_GRID.items():
        searched = ", ".join(f"{v:g}" for v in grid)
        before, after = _value(result.datasheet, names), _value(result.fitted, names)
        lines.append(f"| {label} (`{'`, `'.join(names)}`) | {before} | {after} | {searched} |")
    for name in NOT_IDENTIFIABLE:
        value = f"{getattr(result.datasheet, name):g}"
        lines.append(f"| `{name}` | {value} | {value} | not on one node |")
    return "\n".join(lines)


def _counts(result: Fit) -> str:
    def cell(found: list[Claim], multi_node: bool | None) -> str:
        hits, total = count(found, multi_node)
        return f"{hits} of {total}"

    lines = [
        "| assumptions | one-node claims (fitted on) | multi-node claims (predicted) | all "
        "| one-node median \\|ln ratio\\| |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, found, score in (
        ("datasheet", result.datasheet_claims, result.datasheet_score),
        ("fitted on one node", result.fitted_claims, result.fitted_score),
    ):
        row = " | ".join(cell(found, m) for m in (False, True, None))
        lines.append(f"| {label} | {row} | {score[0]:.3f} |")
    return "\n".join(lines)


def _study(study: dict[float, dict[tuple[str, int], float]]) -> str:
    stacks = ("LM", "MT encoder", "MT decoder")
    head = " | ".join(f"{stack}, 1 → 2 → 4 nodes" for stack in stacks)
    lines = [
        f"| skew | {head} | LM Avg Max Load, 1 / 4 nodes | MT encoder, 1 / 4 nodes |",
        "|---:|---|---|---|---|---|",
    ]
    for skew, by in study.items():
        cells = [" → ".join(f"{by[stack, n]:.2f}" for n in NODES) for stack in stacks]
        cells += [" / ".join(f"{by[f'{s} load', n]:.2f}" for n in (1, 4)) for s in stacks[:2]]
        lines.append(f"| {skew:g} | " + " | ".join(cells) + " |")
    lines.append(
        "| paper | 6.21 → … → 11.55 | 5.75 → … → 10.98 | 2.58 → … → 5.71 | more than 0.6 | |"
    )
    return "\n".join(lines)


def _breakdown(rows: Rows) -> str:
    """Per stack and node count, each gating's fastest batch: where its step goes."""
    lines = [
        "| stack | nodes | gating | sentences / GPU | step (s) | all-to-all (s / step) "
        "| gate (s / step) | expert (s / step) | busiest / mean GPU load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for stack, name in (("LM", "lm-gating"), ("MT encoder", "mt-encoder-gating")):
        for n in NODES:
            for gating in ("static", "dynamic"):
                here = [r for r in rows[name] if r["cluster.nodes"] == n]
                row = fastest([r for r in here if str(r["policies.gating"]).startswith(gating)])
                phase = [
                    row[f"time_breakdown_s.{p}"] / row["steps"]
                    for p in ("alltoall", "gate", "expert")
                ]
                lines.append(
                    f"| {stack} | {n} | {gating} | {row['workload.batch_size'] // (8 * n)} "
                    f"| {row['latency_s.mean']:.3f} | "
                    + " | ".join(f"{t:.3f}" for t in phase)
                    + f" | {row['load_imbalance']:.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "paper")
    args = parser.parse_args()
    began = time.perf_counter()
    runner = Runner(args.runs, args.workers)
    result = fit(runner)
    moved = sensitivity(runner, result.fitted)
    study = skew_study(runner, result.fitted)
    plot(study, result.fitted)
    seconds = time.perf_counter() - began
    hits, total = count(result.datasheet_claims)
    fields = {
        "TABLE": table(result.datasheet_claims, result.fitted_claims),
        "HITS": f"{hits} of {total}",
        "VALUES": _values(result),
        "COUNTS": _counts(result),
        "SENSITIVITY": sensitivity_table(result.fitted_claims, moved),
        "STUDY": _study(study),
        "BREAKDOWN": _breakdown(runner.rows(result.fitted)),
        "PLOT": PLOT.name,
        "SKEWS": ", ".join(f"{s:g}" for s in SKEWS),
        "RANGES": "; ".join(
            f"{column}: {', '.join(f'{v:g}' for v in values)}"
            for column, (_, values) in RANGES.items()
        ),
        "RUNTIME": f"{runner.simulated} points simulated, {seconds / 60:.1f} min "
        f"with {args.workers} worker(s), of which the fit and its predictions "
        f"{result.seconds / 60:.1f} min",
        "DATE": datetime.date.today().isoformat(),
    }
    text = (ROOT / "validation" / "paper.template.md").read_text()
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", value)
    (ROOT / "validation" / "paper.md").write_text(text)
    print(fields["COUNTS"])
    print(fields["RUNTIME"])
    print(f"datasheet: {result.datasheet}\nfitted: {result.fitted}")


if __name__ == "__main__":
    main()
