"""``moesim advise`` on a 200-configuration search of Mixtral 8x7B (issue #16, part 3).

Two devices x 1 or 2 nodes x 4 or 8 GPUs a node x five layouts x five ``max_sequences``, for
the chat traffic of ``scenarios/serving-continuous.yaml`` at 60 requests/s within MLPerf's
limits, into a fresh folder (``--out`` to keep it; a second run into the same folder shows
the resume: nothing runs again). Prints the wall time, what the screen removed (by reason),
how many capacity searches and serving runs it took, and the answer.

    python benchmarks/advise_speed.py [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from moesim.advise import advise
from moesim.advise.outputs import probes

ROOT = Path(__file__).resolve().parent.parent

SPEC = {
    "base": str(ROOT / "scenarios" / "serving-continuous.yaml"),
    "slo": {"ttft_s": 2.0, "tpot_s": 0.2, "percentile": 99},
    "objective": {"rate": 60.0},
    "prices": {"h100-sxm5-80gb": 2.5, "h200-sxm-141gb": 3.5},
    "search": {
        "cluster.device": ["h100-sxm5-80gb", "h200-sxm-141gb"],
        "cluster.nodes": [1, 2],
        "cluster.gpus_per_node": [4, 8],
        "cluster.parallel": [
            {"attention_tp": 1, "expert_tp": 1},
            {"attention_tp": 2, "expert_tp": 1},
            {"attention_tp": 4, "expert_tp": 1},
            {"attention_tp": 4, "expert_tp": 4},
            {"attention_tp": 8, "expert_tp": 8},
        ],
        "policies.scheduler.max_sequences": [32, 64, 128, 256, 512],
    },
    "evaluate": {"runners_up": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", help="keep the search here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        spec = out / "advise-speed.yaml"
        spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
        start = time.perf_counter()
        outcome = advise(spec, out / "advice", workers=args.workers)
        wall = time.perf_counter() - start
        search = outcome.search
        statuses = Counter(c.status for c in search.candidates)
        removed = statuses["screened_out"] + statuses["cannot_meet_slo"]
        runs = sum(len(probes(c)) for c in search.candidates)
        print(
            f"{len(search.candidates)} configurations in {wall:.0f} s wall "
            f"({search.workers} workers; {search.screened_now} deployments timed, "
            f"{search.simulated_now} capacity searches run now)"
        )
        print(f"statuses: {json.dumps(dict(sorted(statuses.items())))}")
        fits = len(search.candidates) - statuses["invalid"] - statuses["out_of_memory"]
        simulated = sum(bool(c.simulated) for c in search.candidates)
        print(
            f"the screen removed {removed} of the {fits} valid configurations that fit "
            f"({statuses['screened_out']} could not beat the best by their bound, "
            f"{statuses['cannot_meet_slo']} cannot meet the SLO); {simulated} simulated, "
            f"{runs} serving runs"
        )
        best = outcome.best
        if best is None:
            print("no configuration meets the targets")
        else:
            params = ", ".join(f"{k}={json.dumps(v)}" for k, v in best.point.params)
            simulated = best.simulated
            print(
                f"best: {params}: {simulated['replicas']} x {best.gpus} {best.device}, "
                f"capacity {simulated['capacity_rps']:.1f} requests/s, "
                f"${simulated['replicas'] * best.cost_per_hour:.2f}/hour"
            )


if __name__ == "__main__":
    main()
