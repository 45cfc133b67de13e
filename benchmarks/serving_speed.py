"""Serving simulation speed: x real time, events per second, wall per event and peak memory.

Targets (issue #14, 2-core machine), each case in a fresh process:

    Mixtral-8x7B, 8 H100, 2000 requests, 64-256 running         >= 200x real time
    DeepSeek-V3, 64 H100, 20000 requests                          >= 50x real time

    python benchmarks/serving_speed.py [--scale 0.1]

``--scale`` multiplies the request counts (and keeps the rates), for a quick look.

Measured 2026-12-01 on the shared 2-core machine (its load moves figures by ±30%; before and
after alternate in fresh processes, medians of three; before is the commit a5b77b3):

    case                 requests  steps events  wall s  x real  events/s  ms/event  RSS GiB
    Mixtral, before          2000  10417   4160    28.4    4.5x       146      6.8      0.12
    Mixtral, after           2000  10415   4081    12.3   10.3x       332      3.0      0.12
    DeepSeek, before         2000    269     28    ~76    0.7x      0.4     2700       2.6
    DeepSeek, after          2000    267     24    27.0    3.0x      0.9     1120       0.45
    DeepSeek, after         20000    527    108 166-190 3.8-4.4x    0.6     1640       1.8

(Mixtral after reaches 13.6x, 2.3 ms an event, when the machine is quiet; DeepSeek before is the
figure of issue #14's brief, on the model card of that day.)

Where the time goes per event (Mixtral, 2000 requests, quiet machine, 2.3 ms): the layer model
of one step (``chunk.time_chunk`` 0.76 ms, ``work_around`` and ``attention_time`` 0.2 ms: about
500 numpy calls whatever the step's size), routing 0.45 ms (2.5 steps an event, ~86 tokens x 32
layers each, and a prefill's multinomials), the scheduler and ``advance`` 0.45 ms (only groups
that changed replan; every group with work advances), the rest 0.4 ms. An arrival makes two
events (its prefill step, then the decodes up to the next arrival), so with the layer model as
it is the floor is about 1 ms an event, ~30x real time.

DeepSeek-V3 is routing-bound (96% of the wall time of 20,000 requests): a step of ``T`` tokens
draws ``T x 58 x 8`` assignments at token level (~45 ns each: K distinct ranks by rejection,
then counting), and a step past 65,536 tokens (``Scenario.routing_resolution``) draws
``CountRouter``'s 8 rounds of multinomials over 64 x 256 x 58 cells (1-2 s). Its steps average
1.4 s simulated and 0.3 s of wall time; 50x would need routing at ~1 ns an assignment.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _serving(model: str, nodes: int, rate: float) -> dict:
    """Lognormal prompts (mean 1024), 256 output tokens, Poisson arrivals, continuous batching."""
    return {
        "name": f"{model}-serving",
        "seed": 0,
        "model": model,
        "cluster": {"nodes": nodes, "gpus_per_node": 8, "device": "h100-sxm5-80gb"},
        "workload": {
            "phase": "serving",
            "requests": {
                "count": 1,
                "arrival": {"process": "poisson", "rate": rate},
                "prompt_tokens": {
                    "distribution": "lognormal",
                    "mean": 1024,
                    "sigma": 0.8,
                    "max": 7000,
                },
                "output_tokens": {"distribution": "fixed", "value": 256},
            },
            "routing": {"source": "synthetic", "distribution": "zipf", "skew": 1.0},
        },
        "policies": {
            "gating": {"name": "dynamic"},
            "scheduler": {"name": "continuous", "max_sequences": 256, "max_batch_tokens": 8192},
        },
    }


# name, scenario, requests, target x real time; Mixtral's rate keeps 64-256 requests running,
# DeepSeek's outruns its prefill and runs all it may (256 a GPU) by 20,000 requests
CASES = [
    ("Mixtral-8x7B, 8 H100, continuous", _serving("mixtral-8x7b", 1, 16.0), 2000, 200.0),
    ("DeepSeek-V3, 64 H100, continuous", _serving("deepseek-v3", 8, 64.0), 20000, 50.0),
]


def measure_once(scenario: dict, count: int) -> dict[str, float]:
    import tempfile

    import yaml

    import moesim

    scenario["workload"]["requests"]["count"] = count
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(scenario, file)
    result, _ = moesim.run(moesim.load_scenario(file.name))
    Path(file.name).unlink()
    return {
        "wall_s": result.wall_seconds,
        "simulated_s": result.simulated_seconds,
        "events": result.events,
        "steps": result.steps,
        "max_running": result.serving.max_running,
        "completed": result.serving.completed,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="share of the request counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_once(*json.loads(args.child))))
        return
    header = f"{'case':36s} {'requests':>8s} {'steps':>7s} {'events':>7s} {'x real':>8s}"
    header += f" {'target':>7s} {'events/s':>9s} {'ms/event':>9s} {'running':>8s}"
    print(f"{header} {'RSS GiB':>8s}")
    for name, scenario, count, target in CASES:
        count = max(1, int(count * args.scale))
        child = json.dumps([scenario, count])
        done = subprocess.run(
            [sys.executable, __file__, "--child", child], capture_output=True, text=True
        )
        if done.returncode:
            print(f"{name:36s} failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        m = json.loads(done.stdout)
        speed = m["simulated_s"] / m["wall_s"]
        print(
            f"{name:36s} {count:8d} {m['steps']:7d} {m['events']:7d} {speed:7.1f}x"
            f" {target:6.0f}x {m['events'] / m['wall_s']:9.1f}"
            f" {1e3 * m['wall_s'] / max(m['events'], 1):9.2f} {m['max_running']:8d}"
            f" {m['peak_rss_gib']:8.2f} {'ok' if speed >= target else 'MISS'}"
        )


if __name__ == "__main__":
    main()
