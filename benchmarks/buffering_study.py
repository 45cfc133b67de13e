"""Expert buffering on the seed paper's MT decoder: hit rate, stall and memory versus slots.

For slots per GPU per decoder MoE layer from 1 to 16 and the policies lru, lifo (step-aware,
the paper's), lfu and belady, prints the hit rate, the time compute waited for copies, the
mean step latency and the expert memory per GPU (issue #3). Zipf skew 1.0, locality 0.5.

    python benchmarks/buffering_study.py [--steps 50] [--slots 1 2 4 6 8 10 12 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import moesim

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ["{name: lru}", "{name: lifo, step_aware: true}", "{name: lfu}", "{name: belady}"]
GIB = 2.0**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 6, 8, 10, 12, 16])
    args = parser.parse_args()
    base = [
        "workload.routing.skew=1.0",
        "workload.routing.locality=0.5",
        f"workload.steps={args.steps}",
    ]
    path = ROOT / "scenarios" / "paper-mt-buffering.yaml"
    none, _ = moesim.run(moesim.load_scenario(path, [*base, "policies.cache=none"]))
    print(
        f"no cache: {none.latency_s.mean * 1e3:.2f} ms per step, experts "
        f"{max(none.memory.weights_bytes_per_device) / GIB:.2f} GiB/GPU of weights"
    )
    print(
        f"{'slots':>5s} {'policy':18s} {'hit rate':>8s} {'stall s':>8s} {'ms/step':>8s} "
        f"{'expert GiB':>10s}"
    )
    for slots in args.slots:
        for policy in POLICIES:
            spec = policy[:-1] + f", slots_per_layer: {slots}, layers: decoder}}"
            result, _ = moesim.run(moesim.load_scenario(path, [*base, f"policies.cache={spec}"]))
            cache = result.cache
            label = cache.name + (" step-aware" if cache.step_aware else "")
            print(
                f"{slots:5d} {label:18s} {cache.hit_rate:8.3f} {cache.stall_s:8.3f} "
                f"{result.latency_s.mean * 1e3:8.2f} "
                f"{max(cache.expert_bytes_per_device) / GIB:10.2f}"
            )


if __name__ == "__main__":
    main()
