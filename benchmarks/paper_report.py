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

from paper_claims import Claim, count, table
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
    skew_gains,
)
from paper_runs import ROOT, Assumptions, Runner

LABELS = {
    "lm_tokens": "LM tokens per sentence",
    "mt_tokens": "MT tokens per sentence",
    "lm_skew": "LM routing skew (Zipf exponent)",
    "encoder_skew": "MT encoder routing skew",
    "decoder_skew": "MT decoder routing skew",
    "decoder_locality": "MT decoder locality",
    "locality": "LM and MT encoder locality",
    "network_gb_per_s": "inter-node bandwidth per GPU (GB/s)",
}


def _values(result: Fit) -> str:
    lines = ["| parameter | datasheet | fitted | searched over |", "|---|---:|---:|---|"]
    for field, label in LABELS.items():
        grid = FIT_GRID.get(field)
        searched = ", ".join(f"{v:g}" for v in grid) if grid else "not identifiable on one node"
        before, after = getattr(result.datasheet, field), getattr(result.fitted, field)
        lines.append(f"| {label} | {before:g} | {after:g} | {searched} |")
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


def _gains(gains: dict[float, dict[tuple[str, int], float]]) -> str:
    stacks = ("LM", "MT encoder", "MT decoder")
    head = " | ".join(f"{stack}, 1 → 2 → 4 nodes" for stack in stacks)
    lines = [f"| skew | {head} |", "|---:|---|---|---|"]
    for skew, by in gains.items():
        trends = [" → ".join(f"{by[stack, n]:.2f}" for n in NODES) for stack in stacks]
        lines.append(f"| {skew:g} | " + " | ".join(trends) + " |")
    lines.append("| paper | 6.21 → … → 11.55 | 5.75 → … → 10.98 | 2.58 → … → 5.71 |")
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
    gains = skew_gains(runner, result.fitted)
    plot(gains)
    seconds = time.perf_counter() - began
    hits, total = count(result.datasheet_claims)
    fields = {
        "TABLE": table(result.datasheet_claims, result.fitted_claims),
        "HITS": f"{hits} of {total}",
        "VALUES": _values(result),
        "COUNTS": _counts(result),
        "SENSITIVITY": sensitivity_table(result.fitted_claims, moved),
        "GAINS": _gains(gains),
        "PLOT": PLOT.name,
        "SKEWS": ", ".join(f"{s:g}" for s in SKEWS),
        "NOT_FITTED": ", ".join(LABELS[f] for f in NOT_IDENTIFIABLE),
        "RANGES": "; ".join(
            f"{column}: {', '.join(f'{v:g}' for v in values)}"
            for column, (_, values) in RANGES.items()
        ),
        "RUNTIME": f"{runner.simulated} points simulated, {seconds / 60:.1f} min "
        f"with {args.workers} worker(s), of which the fit {result.seconds / 60:.1f} min",
        "DATE": datetime.date.today().isoformat(),
    }
    text = (ROOT / "validation" / "paper.template.md").read_text()
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", value)
    (ROOT / "validation" / "paper.md").write_text(text)
    print(fields["COUNTS"])
    print(fields["RUNTIME"])
    print(f"datasheet: {Assumptions()}\nfitted: {result.fitted}")


if __name__ == "__main__":
    main()
