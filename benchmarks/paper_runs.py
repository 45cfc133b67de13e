"""The seed paper's sweeps (``scenarios/paper/*.yaml``) under a set of the assumptions the
paper does not state: sentence lengths, routing skew and locality, inter-node bandwidth.

Each sweep is split by node count and written, with the assumptions as one-value grid entries,
to ``RUNS/sweeps/``; every point's result is kept in ``RUNS/<sweep>/parts`` under the hash of
its resolved scenario, so a point any earlier run simulated (with any assumptions) is never
simulated again. One-node points do not see the network, so its bandwidth is not set on them.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from moesim.sweep import run_sweep

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "scenarios" / "paper"
STACK = {  # sweep -> whose assumptions it runs under
    "dense": "lm",
    "mt-dense": "encoder",
    "lm-gating": "lm",
    "mt-encoder-gating": "encoder",
    "mt-decoder-gating": "decoder",
    "mt-activation": "encoder",
    "load-balancing": "lm",
    "mt-load-balancing": "encoder",
}
ONE_NODE_SWEEPS = tuple(name for name in STACK if "load-balancing" not in name)


@dataclass(frozen=True)
class Assumptions:
    """What the paper leaves out; the defaults are the datasheet assumptions of
    ``scenarios/paper-*.yaml`` and ``hardware_profiles/v100-sxm2-32gb.yaml``."""

    lm_tokens: int = 1024  # tokens per LM sentence
    mt_tokens: int = 64  # tokens per MT sentence (encoder input, decoder context)
    lm_skew: float = 1.0  # Zipf exponent of the routing
    encoder_skew: float = 1.2
    decoder_skew: float = 1.5
    decoder_locality: float = 0.9  # chance a step keeps the previous step's expert ranking
    locality: float = 0.5  # LM and MT encoder
    network_gb_per_s: float = 6.25  # inter-node bandwidth per GPU

    def replace(self, **changes: Any) -> Assumptions:
        return dataclasses.replace(self, **changes)

    def overrides(self, stack: str, nodes: int) -> dict[str, Any]:
        """The scenario fields these assumptions set for a sweep of ``stack`` on ``nodes``."""
        tokens = self.lm_tokens if stack == "lm" else self.mt_tokens
        skew = {"lm": self.lm_skew, "encoder": self.encoder_skew, "decoder": self.decoder_skew}
        locality = self.decoder_locality if stack == "decoder" else self.locality
        fields: dict[str, Any] = {
            "workload.seq_len": tokens,
            "workload.routing.skew": float(skew[stack]),
            "workload.routing.locality": float(locality),
        }
        if nodes > 1:
            fields["cluster.device.links.network.bandwidth"] = f"{self.network_gb_per_s}GB/s"
        return fields


def _by_nodes(spec: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The sweep split into one sweep per node count (1 where it names none)."""
    key = "cluster.nodes"
    if key in spec.get("grid", {}):
        return {n: spec | {"grid": spec["grid"] | {key: [n]}} for n in spec["grid"][key]}
    if key in spec.get("zip", {}):
        columns = spec["zip"]
        split = {}
        for n in dict.fromkeys(columns[key]):
            keep = [i for i, v in enumerate(columns[key]) if v == n]
            split[n] = spec | {"zip": {k: [v[i] for i in keep] for k, v in columns.items()}}
        return split
    return {1: spec}


class Runner:
    """Rows of the paper's sweeps under given assumptions, simulated once per point."""

    def __init__(self, runs: Path, workers: int | None = 1) -> None:
        self.runs, self.workers = runs, workers
        self.specs = {name: yaml.safe_load((PAPER / f"{name}.yaml").read_text()) for name in STACK}
        self.memo: dict[tuple[str, int, tuple], list[dict]] = {}
        self.simulated = 0

    def _rows(self, name: str, nodes: int, spec: dict[str, Any], fields: dict) -> list[dict]:
        key = (name, nodes, tuple(sorted(fields.items())))
        if key not in self.memo:
            grid = spec.get("grid", {}) | {k: [v] for k, v in fields.items()}
            sweep = spec | {"base": str((PAPER / spec["base"]).resolve()), "grid": grid}
            path = self.runs / "sweeps" / f"{name}-{nodes}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(sweep, sort_keys=False))
            outcome = run_sweep(path, self.runs / name, workers=self.workers)
            self.simulated += outcome.ran
            if outcome.ran:
                print(f"  {name}, {nodes} node(s): {outcome.ran} simulated", file=sys.stderr)
            self.memo[key] = pq.read_table(outcome.results).to_pylist()
        return self.memo[key]

    def rows(self, assumptions: Assumptions, multi_node: bool = True) -> dict[str, list[dict]]:
        """Each sweep's rows (all node counts, or only one node and only the sweeps the
        one-node claims read)."""
        out = {}
        for name in STACK if multi_node else ONE_NODE_SWEEPS:
            out[name] = []
            for nodes, spec in _by_nodes(self.specs[name]).items():
                if nodes == 1 or multi_node:
                    fields = assumptions.overrides(STACK[name], nodes)
                    out[name] += self._rows(name, nodes, spec, fields)
        return out
