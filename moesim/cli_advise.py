"""``moesim advise SPEC --out DIR``: the cheapest configuration meeting the latency targets."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from moesim.errors import MoesimError
from moesim.files import writable_dir
from moesim.progress import progress_bar

__all__ = ["add_advise_parser", "run_advise"]


def add_advise_parser(commands: argparse._SubParsersAction) -> None:
    advise = commands.add_parser(
        "advise", help="search for the cheapest configuration that meets the SLO"
    )
    advise.add_argument("spec", help="advise YAML (base, slo, objective, prices, search)")
    advise.add_argument("--out", required=True, metavar="DIR", help="folder for the advice")
    advise.add_argument(
        "--workers", type=int, help="local processes (default and most: the usable cores)"
    )
    advise.add_argument(
        "--ray", metavar="ADDRESS", help="run on Ray: auto, ray://host:port, or local"
    )
    advise.add_argument(
        "--fresh", action="store_true", help="forget finished evaluations in DIR first"
    )


def run_advise(args: argparse.Namespace, console: Console) -> int:
    """Run the search; exit status 1 when no configuration meets the targets."""
    from moesim.advise import advise
    from moesim.advise.spec import load_advise_spec
    from moesim.sweep.point import label

    if args.workers is not None and args.workers < 1:
        raise MoesimError(f"--workers: expected at least 1, got {args.workers}")
    load_advise_spec(args.spec)  # bad input is refused before anything is written
    writable_dir(args.out, "--out")
    with progress_bar("advising", "") as progress:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        outcome = advise(
            args.spec,
            args.out,
            workers=args.workers,
            ray_address=args.ray,
            fresh=args.fresh,
            on_progress=update,
        )
    search = outcome.search
    screened = sum(c.estimate is not None for c in search.candidates)
    simulated = sum(bool(c.simulated) for c in search.candidates)
    console.print(
        f"{len(search.candidates)} configurations: {screened} screened, {simulated} simulated "
        f"({search.screened_now} screens and {search.simulated_now} capacity searches run now)",
        markup=False,
    )
    best = outcome.best
    if best is None:
        console.print("no configuration meets the targets: see advice.md", markup=False)
    else:
        simulated_row = best.simulated
        replicas = simulated_row.get("replicas") or 1
        params = ", ".join(f"{k}={label(v)}" for k, v in best.point.params)
        console.print(
            f"best: {params} ({replicas} x {best.gpus} {best.device}), capacity "
            f"{simulated_row['capacity_rps']:.4g} requests/s, "
            f"${replicas * best.cost_per_hour:,.2f} an hour",
            markup=False,
        )
    for path in outcome.written:
        print(f"wrote {path}", file=sys.stderr)
    return 0 if best is not None else 1
