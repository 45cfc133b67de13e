"""The seed paper's claims (Huang et al. 2023) against moesim's rows of the sweeps
``scenarios/paper/*.yaml``: each claim's ratio (moesim / paper) or agreement, whether it needs
more than one node, the counts and the fit objective over them."""

from __future__ import annotations

import math
from dataclasses import dataclass

GB = 1e9
TOLERANCE = 0.25  # the bar: within 25 % of each ratio
Rows = dict[str, list[dict]]  # sweep name -> its rows (parameters and flattened metrics)


@dataclass(frozen=True)
class Claim:
    """One comparison: the paper's figure and moesim's as printed, the ratio of each number
    compared (none for an ordering), whether they agree, whether it needs 2 or 4 nodes."""

    name: str
    paper: str
    moesim: str
    ratios: tuple[float, ...]
    agree: bool
    multi_node: bool

    @property
    def error(self) -> float | None:
        """The largest ``|ln(moesim / paper)|`` of its numbers (inf for a missing one), or
        None for an ordering."""
        if not self.ratios:
            return None
        return max(abs(math.log(r)) if r > 0 else math.inf for r in self.ratios)

    def cells(self) -> str:
        ratio = f"{self.ratios[0]:.2f}" if len(self.ratios) == 1 else ""
        return f"{self.moesim} | {ratio} | {'yes' if self.agree else 'no'}"


def ratio_claim(
    name: str, paper: float, moesim: float, unit: str = "x", *, multi_node: bool = False
) -> Claim:
    """A figure compared as a ratio; it agrees within ``TOLERANCE``."""
    share = moesim / paper
    agree = abs(share - 1) <= TOLERANCE
    return Claim(name, f"{paper:.3g}{unit}", f"{moesim:.3g}{unit}", (share,), agree, multi_node)


def count(claims: list[Claim], multi_node: bool | None = None) -> tuple[int, int]:
    """(claims that agree, claims) among those needing more nodes (True), one (False), all."""
    chosen = [c for c in claims if multi_node is None or c.multi_node == multi_node]
    return sum(c.agree for c in chosen), len(chosen)


def objective(claims: list[Claim]) -> tuple[float, float]:
    """(median, mean) of the one-node claims' errors: the fit minimises the median, the mean
    breaks ties."""
    errors = sorted(c.error for c in claims if not c.multi_node and c.error is not None)
    if not errors:
        return math.inf, math.inf
    middle = len(errors) // 2
    median = errors[middle] if len(errors) % 2 else (errors[middle - 1] + errors[middle]) / 2
    return median, sum(errors) / len(errors)


def table(datasheet: list[Claim], fitted: list[Claim]) -> str:
    """The claims under the datasheet assumptions beside the same claims under the fitted ones
    (fitted on the one-node claims, predicted on the others)."""
    lines = [
        "| claim | paper | moesim, datasheet | / paper | within 25 % "
        "| moesim, fitted | / paper | within 25 % | fitted |",
        "|---|---:|---:|---:|:---:|---:|---:|:---:|:---:|",
    ]
    for before, after in zip(datasheet, fitted, strict=True):
        role = "predicted" if after.multi_node else "fitted on"
        lines.append(
            f"| {before.name} | {before.paper} | {before.cells()} | {after.cells()} | {role} |"
        )
    return "\n".join(lines)


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


def fastest(rows: list[dict]) -> dict:
    """The feasible row of the highest throughput."""
    return max((r for r in rows if _fits(r)), key=lambda r: r["throughput_tokens_per_s"])


def best(rows: list[dict]) -> float:
    """Maximum throughput over the feasible batch sizes."""
    return max((r["throughput_tokens_per_s"] for r in rows if _fits(r)), default=float("nan"))


def _largest(rows: list[dict], gpus: int) -> int:
    return max((r["workload.batch_size"] for r in rows if _fits(r)), default=0) // gpus


def gating_gains(rows: Rows, nodes: tuple[int, ...]) -> dict[tuple[str, int], float]:
    """Maximum throughput of dynamic over static gating, per stack and node count."""
    gains = {}
    for model, name, key in (
        ("LM", "lm-gating", "policies.gating"),
        ("MT encoder", "mt-encoder-gating", "policies.gating"),
        ("MT decoder", "mt-decoder-gating", "policies"),
    ):
        for n in nodes:
            here = _pick(rows[name], **{"cluster.nodes": n})
            static = best([r for r in here if "static" in str(r[key])])
            dynamic = best(
                [r for r in here if "dynamic" in str(r[key]) and "cache" not in str(r[key])]
            )
            gains[model, n] = dynamic / static
    return gains


def claims(rows: Rows, multi_node: bool = True) -> list[Claim]:
    """Every claim in the report's order; without ``multi_node`` only the one-node ones, and
    then ``rows`` need only hold the one-node points."""
    out: list[Claim] = []
    dense = rows["dense"]
    lm_moe, lm_dense = _one(dense, model="paper-lm"), _one(dense, model="paper-lm-dense")
    mt = rows["mt-dense"]
    enc = _one(mt, model="paper-mt", **{"workload.phase": "prefill"})
    dec = _one(mt, model="paper-mt", **{"workload.phase": "decode"})
    enc_dense = _one(mt, model="paper-mt-dense", **{"workload.phase": "prefill"})
    dec_dense = _one(mt, model="paper-mt-dense", **{"workload.phase": "decode"})
    lat = "latency_s.mean"
    out.append(ratio_claim("LM latency per batch, static, 1 node (s)", 1.09, lm_moe[lat], " s"))
    out.append(ratio_claim("LM dense latency (ms)", 74.2, lm_dense[lat] * 1e3, " ms"))
    out.append(ratio_claim("LM MoE / dense latency", 1.09 / 0.0742, lm_moe[lat] / lm_dense[lat]))
    out.append(
        ratio_claim("MT encoder MoE / dense latency", 2.26 / 0.101, enc[lat] / enc_dense[lat])
    )
    out.append(
        ratio_claim(
            "MT decoder MoE / dense latency (per step)", 0.090 / 0.032, dec[lat] / dec_dense[lat]
        )
    )
    peak = "memory.peak_bytes_per_device_max"
    out.append(ratio_claim("LM peak memory per GPU (GB)", 18.88, lm_moe[peak] / GB, " GB"))
    out.append(
        ratio_claim("LM MoE / dense peak memory", 18.88 / 2.2, lm_moe[peak] / lm_dense[peak])
    )
    out.append(ratio_claim("MT peak memory per GPU (GB)", 21.16, enc[peak] / GB, " GB"))
    out.append(ratio_claim("MT MoE / dense peak memory", 21.16 / 7.02, enc[peak] / enc_dense[peak]))

    lm = rows["lm-gating"]
    act = "memory.activation_peak_bytes_per_device_max"
    at_64 = {"cluster.nodes": 1, "workload.batch_size": 64}
    lm_static = _one(lm, **at_64, **{"policies.gating": "static"})
    lm_dynamic = _one(lm, **at_64, **{"policies.gating": "dynamic"})
    out.append(
        ratio_claim(
            "LM activation memory, batch 8/GPU, static (GB)", 6.29, lm_static[act] / GB, " GB"
        )
    )
    out.append(
        ratio_claim(
            "LM activation memory, static / dynamic", 6.29 / 1.28, lm_static[act] / lm_dynamic[act]
        )
    )
    out.append(
        ratio_claim("LM peak memory, static / dynamic", 1.36, lm_static[peak] / lm_dynamic[peak])
    )
    mt_act = rows["mt-activation"]
    mt_static = _one(mt_act, **{"policies.gating": "static"})
    mt_dynamic = _one(mt_act, **{"policies.gating": "dynamic"})
    out.append(
        ratio_claim(
            "MT activation memory, batch 8/GPU, static / dynamic",
            1.89 / 1.05,
            mt_static[act] / mt_dynamic[act],
        )
    )
    out.append(
        ratio_claim("MT peak memory, static / dynamic", 1.1, mt_static[peak] / mt_dynamic[peak])
    )

    encoder, decoder = rows["mt-encoder-gating"], rows["mt-decoder-gating"]
    for model, gated, limits in (("LM", lm, (8, 64)), ("MT", encoder, (48, 96))):
        one = _pick(gated, **{"cluster.nodes": 1})
        got = (
            _largest(_pick(one, **{"policies.gating": "static"}), 8),
            _largest(_pick(one, **{"policies.gating": "dynamic"}), 8),
        )
        out.append(
            Claim(
                f"{model} largest batch per GPU on 1 node, static / dynamic",
                f"{limits[0]} / {limits[1]}",
                f"{got[0]} / {got[1]}",
                tuple(g / p for g, p in zip(got, limits, strict=True)),
                got == limits,
                False,
            )
        )

    nodes = (1, 2, 4) if multi_node else (1,)
    gains = gating_gains(rows, nodes)
    for model, single, multi in (
        ("LM", 6.21, 11.55),
        ("MT encoder", 5.75, 10.98),
        ("MT decoder", 2.58, 5.71),
    ):
        out.append(
            ratio_claim(f"{model} max throughput dynamic / static, 1 node", single, gains[model, 1])
        )
        if not multi_node:
            continue
        out.append(
            ratio_claim(
                f"{model} max throughput dynamic / static, up to 4 nodes",
                multi,
                max(gains[model, n] for n in nodes),
                multi_node=True,
            )
        )
        trend = " → ".join(f"{gains[model, n]:.2f}" for n in nodes)
        grows = gains[model, 4] > gains[model, 1]
        out.append(Claim(f"{model} gain grows with nodes", "yes", trend, (), grows, True))

    for n, paper in ((1, 1.0), (2, 2.21), (4, 4.30)):
        if n not in nodes:
            continue
        here = _pick(decoder, **{"cluster.nodes": n})
        static = best([r for r in here if "static" in r["policies"]])
        buffered = best([r for r in here if "cache" in r["policies"]])
        dynamic = best(
            [r for r in here if "dynamic" in r["policies"] and "cache" not in r["policies"]]
        )
        name = f"MT decoder buffering (10 slots) / static, {n} node(s)"
        out.append(ratio_claim(name, paper, buffered / static, multi_node=n > 1))
        out.append(
            Claim(
                f"buffering below dynamic without it, {n} node(s)",
                "yes",
                f"{buffered / dynamic:.2f} of it",
                (),
                buffered < dynamic,
                n > 1,
            )
        )
    if not multi_node:
        return out

    for model, name, paper in (
        ("LM", "load-balancing", 1.101),
        ("MT encoder", "mt-load-balancing", 1.195),
    ):
        balance_gains = []
        for n in (1, 4):
            here = _pick(rows[name], **{"cluster.nodes": n})
            greedy = _one(here, **{"policies.placement": "greedy"})["throughput_tokens_per_s"]
            plain = _one(here, **{"policies.placement": "contiguous"})["throughput_tokens_per_s"]
            balance_gains.append(greedy / plain)
        out.append(
            ratio_claim(
                f"{model} throughput, greedy placement / dynamic alone (best of 1, 4 nodes)",
                paper,
                max(balance_gains),
                multi_node=True,
            )
        )
    four = _pick(lm, **{"cluster.nodes": 4, "policies.gating": "dynamic"})
    fits = sorted(r["workload.batch_size"] // 32 for r in four if _fits(r))
    out.append(
        Claim(
            "LM on 4 nodes fits batch 64 per GPU (dynamic)",
            "64 and 128 (with balancing)",
            f"fits up to {fits[-1] if fits else 0}",
            (),
            64 in fits,
            True,
        )
    )
    return out
