"""Runs the seed paper's experiments (``scenarios/paper/*.yaml``) and writes
``validation/paper.md``: moesim's predictions beside the paper's measurements, as ratios and
orderings.

    python benchmarks/paper_report.py [--workers 2] [--runs runs/paper]

Sweeps resume: a rerun only simulates the points missing from ``--runs``. A batch is feasible
when the predicted peak memory fits the V100's 32 GB.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import pyarrow.parquet as pq

from moesim.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = (
    "dense",
    "mt-dense",
    "lm-gating",
    "mt-encoder-gating",
    "mt-decoder-gating",
    "mt-activation",
    "load-balancing",
    "mt-load-balancing",
)
GB = 1e9
TOLERANCE = 0.25  # the bar: within 25 % of each ratio


def _rows(runs: Path, name: str) -> list[dict]:
    return pq.read_table(runs / name / "results.parquet").to_pylist()


def _matches(cell, wanted, key: str) -> bool:
    """Policies by their name (a label starts with it), anything else by equality."""
    return str(cell).startswith(wanted) if key.startswith("policies") else cell == wanted


def _pick(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(_matches(r.get(k), v, k) for k, v in where.items())]


def _one(rows: list[dict], **where) -> dict:
    (row,) = _pick(rows, **where)
    return row


def _fits(row: dict) -> bool:
    return row["status"] != "error" and row.get("memory.out_of_memory") is False


def _best(rows: list[dict]) -> float:
    """Maximum throughput over the feasible batch sizes."""
    return max((r["throughput_tokens_per_s"] for r in rows if _fits(r)), default=float("nan"))


def _largest(rows: list[dict], gpus: int) -> int:
    return max((r["workload.batch_size"] for r in rows if _fits(r)), default=0) // gpus


class Table:
    def __init__(self) -> None:
        self.lines = [
            "| claim | paper | moesim | moesim / paper | within 25 % |",
            "|---|---:|---:|---:|:---:|",
        ]
        self.hits = self.total = 0

    def ratio(self, claim: str, paper: float, moesim: float, unit: str = "x") -> None:
        share = moesim / paper
        ok = abs(share - 1) <= TOLERANCE
        self.hits += ok
        self.total += 1
        self.lines.append(
            f"| {claim} | {paper:.3g}{unit} | {moesim:.3g}{unit} | {share:.2f} | "
            f"{'yes' if ok else 'no'} |"
        )

    def fact(self, claim: str, paper: str, moesim: str, agree: bool) -> None:
        self.hits += agree
        self.total += 1
        self.lines.append(f"| {claim} | {paper} | {moesim} | | {'yes' if agree else 'no'} |")


def report(runs: Path) -> str:
    table = Table()
    dense = _rows(runs, "dense")
    lm_moe, lm_dense = _one(dense, model="paper-lm"), _one(dense, model="paper-lm-dense")
    mt = _rows(runs, "mt-dense")
    enc = _one(mt, model="paper-mt", **{"workload.phase": "prefill"})
    dec = _one(mt, model="paper-mt", **{"workload.phase": "decode"})
    enc_dense = _one(mt, model="paper-mt-dense", **{"workload.phase": "prefill"})
    dec_dense = _one(mt, model="paper-mt-dense", **{"workload.phase": "decode"})
    lat = "latency_s.mean"
    table.ratio("LM latency per batch, static, 1 node (s)", 1.09, lm_moe[lat], " s")
    table.ratio("LM dense latency (ms)", 74.2, lm_dense[lat] * 1e3, " ms")
    table.ratio("LM MoE / dense latency", 1.09 / 0.0742, lm_moe[lat] / lm_dense[lat])
    table.ratio("MT encoder MoE / dense latency", 2.26 / 0.101, enc[lat] / enc_dense[lat])
    table.ratio(
        "MT decoder MoE / dense latency (per step)", 0.090 / 0.032, dec[lat] / dec_dense[lat]
    )
    peak = "memory.peak_bytes_per_device_max"
    table.ratio("LM peak memory per GPU (GB)", 18.88, lm_moe[peak] / GB, " GB")
    table.ratio("LM MoE / dense peak memory", 18.88 / 2.2, lm_moe[peak] / lm_dense[peak])
    table.ratio("MT peak memory per GPU (GB)", 21.16, enc[peak] / GB, " GB")
    table.ratio("MT MoE / dense peak memory", 21.16 / 7.02, enc[peak] / enc_dense[peak])

    lm = _rows(runs, "lm-gating")
    act = "memory.activation_peak_bytes_per_device_max"
    lm_static = _one(
        lm, **{"cluster.nodes": 1, "workload.batch_size": 64, "policies.gating": "static"}
    )
    lm_dynamic = _one(
        lm, **{"cluster.nodes": 1, "workload.batch_size": 64, "policies.gating": "dynamic"}
    )
    table.ratio("LM activation memory, batch 8/GPU, static (GB)", 6.29, lm_static[act] / GB, " GB")
    table.ratio(
        "LM activation memory, static / dynamic", 6.29 / 1.28, lm_static[act] / lm_dynamic[act]
    )
    table.ratio("LM peak memory, static / dynamic", 1.36, lm_static[peak] / lm_dynamic[peak])
    mt_act = _rows(runs, "mt-activation")
    mt_static, mt_dynamic = (
        _one(mt_act, **{"policies.gating": "static"}),
        _one(mt_act, **{"policies.gating": "dynamic"}),
    )
    table.ratio(
        "MT activation memory, batch 8/GPU, static / dynamic",
        1.89 / 1.05,
        mt_static[act] / mt_dynamic[act],
    )
    table.ratio("MT peak memory, static / dynamic", 1.1, mt_static[peak] / mt_dynamic[peak])

    encoder = _rows(runs, "mt-encoder-gating")
    decoder = _rows(runs, "mt-decoder-gating")
    for model, rows, static_limit, dynamic_limit in (("LM", lm, 8, 64), ("MT", encoder, 48, 96)):
        one = _pick(rows, **{"cluster.nodes": 1})
        got = (
            _largest(_pick(one, **{"policies.gating": "static"}), 8),
            _largest(_pick(one, **{"policies.gating": "dynamic"}), 8),
        )
        table.fact(
            f"{model} largest batch per GPU on 1 node, static / dynamic",
            f"{static_limit} / {dynamic_limit}",
            f"{got[0]} / {got[1]}",
            got == (static_limit, dynamic_limit),
        )

    gains = {}
    for model, rows, key in (
        ("LM", lm, "policies.gating"),
        ("MT encoder", encoder, "policies.gating"),
        ("MT decoder", decoder, "policies"),
    ):
        for nodes in (1, 2, 4):
            here = _pick(rows, **{"cluster.nodes": nodes})
            static = _best([r for r in here if "static" in str(r[key])])
            dynamic = _best(
                [r for r in here if "dynamic" in str(r[key]) and "cache" not in str(r[key])]
            )
            gains[model, nodes] = dynamic / static
    for model, single, multi in (
        ("LM", 6.21, 11.55),
        ("MT encoder", 5.75, 10.98),
        ("MT decoder", 2.58, 5.71),
    ):
        table.ratio(f"{model} max throughput dynamic / static, 1 node", single, gains[model, 1])
        best = max(gains[model, n] for n in (1, 2, 4))
        table.ratio(f"{model} max throughput dynamic / static, up to 4 nodes", multi, best)
        growing = gains[model, 4] > gains[model, 1]
        table.fact(
            f"{model} gain grows with nodes",
            "yes",
            " → ".join(f"{gains[model, n]:.2f}" for n in (1, 2, 4)),
            growing,
        )

    for nodes, paper in ((1, 1.0), (2, 2.21), (4, 4.30)):
        here = _pick(decoder, **{"cluster.nodes": nodes})
        static = _best([r for r in here if "static" in r["policies"]])
        buffered = _best([r for r in here if "cache" in r["policies"]])
        dynamic = _best(
            [r for r in here if "dynamic" in r["policies"] and "cache" not in r["policies"]]
        )
        table.ratio(
            f"MT decoder buffering (10 slots) / static, {nodes} node(s)", paper, buffered / static
        )
        table.fact(
            f"buffering below dynamic without it, {nodes} node(s)",
            "yes",
            f"{buffered / dynamic:.2f} of it",
            buffered < dynamic,
        )

    for model, name, paper in (
        ("LM", "load-balancing", 1.101),
        ("MT encoder", "mt-load-balancing", 1.195),
    ):
        rows = _rows(runs, name)
        gains_by_nodes = []
        for nodes in (1, 4):
            here = _pick(rows, **{"cluster.nodes": nodes})
            greedy = _one(here, **{"policies.placement": "greedy"})["throughput_tokens_per_s"]
            plain = _one(here, **{"policies.placement": "contiguous"})["throughput_tokens_per_s"]
            gains_by_nodes.append(greedy / plain)
        table.ratio(
            f"{model} throughput, greedy placement / dynamic alone (best of 1, 4 nodes)",
            paper,
            max(gains_by_nodes),
        )
    four = _pick(lm, **{"cluster.nodes": 4, "policies.gating": "dynamic"})
    fits = sorted(r["workload.batch_size"] // 32 for r in four if _fits(r))
    table.fact(
        "LM on 4 nodes fits batch 64 per GPU (dynamic)",
        "64 and 128 (with balancing)",
        f"up to {fits[-1]} simulated, all fit",
        64 in fits,
    )
    return "\n".join(table.lines), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "paper")
    args = parser.parse_args()
    for name in SWEEPS:
        run_sweep(
            ROOT / "scenarios" / "paper" / f"{name}.yaml", args.runs / name, workers=args.workers
        )
    lines, table = report(args.runs)
    text = (ROOT / "validation" / "paper.template.md").read_text()
    text = text.replace("{{TABLE}}", lines).replace("{{HITS}}", f"{table.hits} of {table.total}")
    text = text.replace("{{DATE}}", datetime.date.today().isoformat())
    (ROOT / "validation" / "paper.md").write_text(text)
    print(lines)
    print(f"{table.hits} of {table.total} within 25 % or in agreement")


if __name__ == "__main__":
    main()
