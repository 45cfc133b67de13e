"""Placement planners on the seed paper's LM: load balance and throughput (issue #4).

For 8 and 16 GPUs and Zipf skew 0.5, 1.0 and 1.5, each planner learns from a warm-up window
and is measured on the steps after it (the same steps for every planner), prefill of 8 x 512
tokens per step with dynamic gating on A100s. Prints imbalance (max / mean GPU expert tokens),
the seed paper's Max Load and Avg Max Load, and throughput relative to contiguous.

    python benchmarks/placement_study.py [--steps 20] [--history 20] [--locality 0.9]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import moesim

ROOT = Path(__file__).resolve().parent.parent
PLANNERS = [
    "contiguous",
    "round_robin",
    "greedy",
    "anti_correlation",
    "{name: replicated, redundant_experts: GPUS}",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--locality", type=float, default=0.9)
    args = parser.parse_args()
    print(
        f"{'GPUs':>4s} {'skew':>4s} {'planner':18s} {'imbalance':>9s} {'max load':>8s} "
        f"{'avg max':>8s} {'tokens/s':>10s} {'vs contig':>9s}"
    )
    for gpus in (8, 16):
        for skew in (0.5, 1.0, 1.5):
            base = None
            for planner in PLANNERS:
                spec = planner.replace("GPUS", str(gpus))
                if not spec.startswith("{"):
                    spec = f"{{name: {spec}}}"
                spec = spec[:-1] + f", history_steps: {args.history}}}"
                scenario = moesim.load_scenario(
                    ROOT / "scenarios" / "quickstart.yaml",
                    [
                        "workload.phase=prefill",
                        "workload.batch_size=8",
                        f"workload.steps={args.steps}",
                        f"cluster.nodes={gpus // 8}",
                        f"workload.routing.skew={skew}",
                        f"workload.routing.locality={args.locality}",
                        f"policies.placement={spec}",
                    ],
                )
                result, _ = moesim.run(scenario)
                base = base or result.throughput_tokens_per_s
                p = result.placement
                print(
                    f"{gpus:4d} {skew:4.1f} {result.placement.name:18s} "
                    f"{result.load_imbalance:9.3f} {p.max_load:8.3f} {p.avg_max_load:8.3f} "
                    f"{result.throughput_tokens_per_s:10.0f} "
                    f"{result.throughput_tokens_per_s / base:9.3f}"
                )


if __name__ == "__main__":
    main()
