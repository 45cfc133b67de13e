"""Sweep throughput: points per minute with 1 and 2 local workers and on a local Ray instance.

A 24-point sweep of the tiny scenario (batch x gating x cache slots), each point a few hundred
milliseconds of simulation; every configuration runs into a fresh store ``--repeats`` times and
the median is reported, with the speed-up over one worker.

    python benchmarks/sweep_speed.py [--repeats 3] [--steps 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from moesim.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent


def _spec(folder: Path, steps: int) -> Path:
    spec = {
        "base": str(ROOT / "scenarios" / "tiny" / "tiny-dynamic.yaml"),
        "grid": {
            "workload.batch_size": [8, 16, 32, 64],
            "policies.gating": [{"name": "dynamic"}, {"name": "static", "capacity_factor": 1.5}],
            "policies.cache": [
                {"name": "none"},
                {"name": "lru", "slots_per_layer": 2},
                {"name": "lifo", "slots_per_layer": 2, "step_aware": True},
            ],
        },
        "zip": {"workload.steps": [steps]},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _points_per_minute(spec: Path, folder: Path, repeats: int, **options) -> float:
    rates = []
    for repeat in range(repeats):
        start = time.perf_counter()
        ran = run_sweep(spec, folder / f"{len(rates)}-{repeat}", fresh=True, **options).ran
        rates.append(ran / (time.perf_counter() - start) * 60)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = _spec(folder, args.steps)
        one = _points_per_minute(spec, folder / "one", args.repeats, workers=1)
        two = _points_per_minute(spec, folder / "two", args.repeats, workers=2)
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            on_ray = _points_per_minute(spec, folder / "ray", args.repeats, ray_address="local")
        finally:
            ray.shutdown()
    print("executor                 points/min   vs 1 worker")
    for name, rate in (
        ("local, 1 worker", one),
        ("local, 2 workers", two),
        ("ray, local 2 CPUs", on_ray),
    ):
        print(f"{name:<24} {rate:>10.1f}   {rate / one:>6.2f}x")


if __name__ == "__main__":
    main()
