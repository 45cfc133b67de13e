"""Simulator speed and memory: x real time, wall-time growth, peak memory, and the two routing
resolutions compared on the same scenario.

Targets (issue #11, 2-core machine), each the median of ``--repeats`` runs, each case in a
fresh process so that its peak resident memory is its own:

    paper LM, 8 V100, decode b64, dynamic, 1000 steps     >= 200x
    paper LM, 8 V100, prefill 8 x 512                     >= 300x
    paper LM, 8 V100, prefill 64 x 512                    >= 1000x
    DeepSeek-V3, 64 H100, decode b64 and b256, 1000 steps >= 100x
    DeepSeek-V3, 256 H100, decode b8192                   >= 30x
    DeepSeek-V3, 256 and 1024 H100, decode                peak RSS < 2 GiB

    python benchmarks/sim_speed.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LM = "scenarios/paper-lm.yaml"
DEEPSEEK = "scenarios/deepseek-v3-64gpu.yaml"
DYNAMIC = "policies.gating={name: dynamic}"


@dataclass(frozen=True)
class Case:
    name: str
    scenario: str
    overrides: list[str]
    target: float = 0.0  # x real time; 0: no speed target
    memory_gib: float = 0.0  # peak RSS target; 0: none
    steps: int = 100
    extra: list[str] = field(default_factory=list)


def _lm_decode(batch: int) -> list[str]:
    return ["workload.phase=decode", f"workload.batch_size={batch}", DYNAMIC]


def _lm_prefill(batch: int) -> list[str]:
    return ["workload.phase=prefill", f"workload.batch_size={batch}", "workload.seq_len=512"]


def _deepseek(gpus: int, batch: int) -> list[str]:
    return [f"cluster.nodes={gpus // 8}", f"workload.batch_size={batch}"]


CASES = [
    Case("paper LM, 8 V100, decode b64, dynamic", LM, _lm_decode(64), 200, steps=1000),
    Case("paper LM, 8 V100, prefill 8 x 512", LM, _lm_prefill(8), 300),
    Case("paper LM, 8 V100, prefill 64 x 512", LM, _lm_prefill(64), 1000),
    Case("DeepSeek-V3, 64 H100, decode b64", DEEPSEEK, _deepseek(64, 64), 100, steps=1000),
    Case("DeepSeek-V3, 64 H100, decode b256", DEEPSEEK, _deepseek(64, 256), 100, steps=1000),
    Case("DeepSeek-V3, 256 H100, decode b8192", DEEPSEEK, _deepseek(256, 8192), 30, 2.0),
    Case("DeepSeek-V3, 1024 H100, decode b8192", DEEPSEEK, _deepseek(1024, 8192), 0, 2.0, 20),
]
ROOMY = "cluster.device.memory.capacity=1TB"  # scaling runs measure speed, not whether it fits


def measure_once(scenario: str, overrides: list[str]) -> dict[str, float]:
    """One run in this process: wall and simulated seconds, headline metrics, peak RSS."""
    import moesim

    result, _ = moesim.run(moesim.load_scenario(ROOT / scenario, overrides))
    return {
        "wall_s": result.wall_seconds,
        "simulated_s": result.simulated_seconds,
        "throughput": result.throughput_tokens_per_s,
        "p50": result.latency_s.p50,
        "alltoall_bytes": sum(result.alltoall_bytes_by_kind.values()),
        "load_imbalance": result.load_imbalance or 0.0,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def measure(scenario: str, overrides: list[str], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` fresh processes (peak RSS: the largest)."""
    runs = []
    for _ in range(repeats):
        command = [sys.executable, __file__, "--child", json.dumps([scenario, overrides])]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{scenario} {overrides}: {done.stderr.strip().splitlines()[-1]}")
        runs.append(json.loads(done.stdout))
    out = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    out["peak_rss_gib"] = max(r["peak_rss_gib"] for r in runs)
    out["speed"] = out["simulated_s"] / out["wall_s"]
    return out


def _difference(a: dict[str, float], b: dict[str, float]) -> float:
    keys = ("throughput", "p50", "alltoall_bytes", "load_imbalance")
    return max(abs(a[k] - b[k]) / abs(a[k]) if a[k] else abs(b[k]) for k in keys)


def _speed(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2g}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the resolution comparison")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        scenario, overrides = json.loads(args.child)
        print(json.dumps(measure_once(scenario, overrides)))
        return

    print(f"median of {args.repeats} runs, each in a fresh process\n")
    header = f"{'case':40s} {'steps':>5s} {'wall s':>7s} {'x real':>9s} {'target':>7s}"
    print(f"{header} {'RSS GiB':>8s}")
    for case in CASES:
        overrides = [*case.overrides, f"workload.steps={case.steps}"]
        m = measure(case.scenario, overrides, args.repeats)
        fits = not case.memory_gib or m["peak_rss_gib"] < case.memory_gib
        ok = m["speed"] >= case.target and fits
        target = f"{case.target:.0f}x" if case.target else "-"
        print(
            f"{case.name:40s} {case.steps:5d} {m['wall_s']:7.3f} {_speed(m['speed']):>9s}"
            f" {target:>7s} {m['peak_rss_gib']:8.2f} {'ok' if ok else 'MISS'}"
        )

    print("\nwall-time growth with the tokens of a step (paper LM prefill x 512, 100 steps)")
    walls = {b: measure(LM, [*_lm_prefill(b), "workload.steps=100"], args.repeats) for b in (8, 64)}
    ratio = walls[64]["wall_s"] / walls[8]["wall_s"]
    print(f"  8 -> 64 sequences (8x the tokens): {ratio:.2f}x the wall time")

    print("\nwall-time growth with GPUs (DeepSeek-V3 decode b256, 100 steps, memory unchecked)")
    print(f"{'GPUs':>6s} {'wall s':>8s} {'x real':>9s} {'wall/wall(8)':>13s} {'RSS GiB':>8s}")
    base = None
    for gpus in (8, 64, 256, 1024):
        m = measure(DEEPSEEK, [*_deepseek(gpus, 256), ROOMY, "workload.steps=100"], args.repeats)
        base = base or m["wall_s"]
        print(
            f"{gpus:6d} {m['wall_s']:8.3f} {_speed(m['speed']):>9s} {m['wall_s'] / base:13.2f}"
            f" {m['peak_rss_gib']:8.2f}"
        )
    if args.quick:
        return

    print("\ntoken-level vs count-level routing on the same scenario (x real time, one run each;")
    print("difference: the largest over throughput, p50 latency, all-to-all bytes, imbalance)")
    print(f"{'case':40s} {'steps':>5s} {'tokens':>9s} {'counts':>9s} {'difference':>11s}")
    for case in CASES[:6]:
        steps = min(case.steps, 200 if case.memory_gib == 0 else 5)
        overrides = [*case.overrides, f"workload.steps={steps}"]
        by = {
            r: measure(case.scenario, [*overrides, f"workload.routing.resolution={r}"], 1)
            for r in ("tokens", "counts")
        }
        print(
            f"{case.name:40s} {steps:5d} {_speed(by['tokens']['speed']):>9s}"
            f" {_speed(by['counts']['speed']):>9s} {_difference(by['tokens'], by['counts']):11.2%}"
        )


if __name__ == "__main__":
    main()
