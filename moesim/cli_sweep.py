"""``moesim sweep`` and ``moesim plot``: run a sweep file into a result store, draw from it."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from moesim.errors import MoesimError
from moesim.progress import progress_bar

__all__ = ["add_sweep_parsers", "run_plot", "run_sweep_command"]


def add_sweep_parsers(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="run every point of a sweep file")
    sweep.add_argument("spec", help="sweep YAML (base, grid, zip, random)")
    sweep.add_argument("--out", required=True, metavar="DIR", help="result store folder")
    sweep.add_argument(
        "--workers", type=int, help="local processes (default and most: the usable cores)"
    )
    sweep.add_argument(
        "--ray", metavar="ADDRESS", help="run on Ray: auto, ray://host:port, or local"
    )
    mode = sweep.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", default=True, help="run only missing points (default)"
    )
    mode.add_argument("--fresh", action="store_true", help="forget the store's rows first")
    plot = commands.add_parser("plot", help="line or bar chart from a sweep's result store")
    plot.add_argument("store", help="sweep --out folder (or a results.parquet)")
    plot.add_argument("--x", required=True, help="column on the x axis")
    plot.add_argument("--y", required=True, help="column on the y axis")
    plot.add_argument("--hue", help="one line per value of this column")
    plot.add_argument("--facet", help="one panel per value of this column")
    plot.add_argument("--kind", choices=("line", "bar"), default="line")
    plot.add_argument("--out", help="image to write, .png or .svg (default: in the store)")


def run_sweep_command(args: argparse.Namespace, console: Console) -> int:
    """Run the sweep; exit status 1 when some points failed (their rows say why)."""
    from moesim.sweep import run_sweep

    if args.workers is not None and args.workers < 1:
        raise MoesimError(f"--workers: expected at least 1, got {args.workers}")
    with progress_bar("sweeping", "points") as progress:
        task = progress.add_task("points", total=None)
        outcome = run_sweep(
            args.spec,
            args.out,
            workers=args.workers,
            ray_address=args.ray,
            fresh=args.fresh,
            on_progress=lambda done, of: progress.update(task, completed=done, total=of),
        )
    where = f" ({outcome.workers} local workers)" if outcome.ran and outcome.workers else ""
    console.print(
        f"{outcome.total} points: {outcome.ran} run now, "
        f"{outcome.total - outcome.ran} already in the store{where}",
        markup=False,
    )
    print(f"wrote {outcome.results}", file=sys.stderr)
    if outcome.failed:
        print(
            f"moesim: {outcome.failed} of {outcome.total} points failed: status error in "
            f"{outcome.results} (a rerun with the same --out runs them again)",
            file=sys.stderr,
        )
        return 1
    return 0


def run_plot(args: argparse.Namespace, console: Console) -> None:
    from moesim.sweep.plot import plot_results

    plot = plot_results(
        args.store, args.x, args.y, hue=args.hue, facet=args.facet, kind=args.kind, out=args.out
    )
    if plot.points_per_x > 1:
        over = ", ".join(plot.varying or []) or "columns the store does not list"
        print(
            f"up to {plot.points_per_x} points share an x: drawn as their mean with a min-max "
            f"band; they differ in {over} (--hue or --facet one of them to split)",
            file=sys.stderr,
        )
    print(f"wrote {plot.path}", file=sys.stderr)
