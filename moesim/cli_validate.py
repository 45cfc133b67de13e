"""``moesim calibrate`` and ``moesim validate``: measure this machine, and check predictions
against real runs on it (both need torch, imported only when the command runs)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moesim.errors import MoesimError
from moesim.files import writable_dir
from moesim.progress import progress_bar

__all__ = ["add_calibrate_parser", "add_validate_parser", "run_calibrate", "run_validate"]


def add_calibrate_parser(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="measure this machine's device and write a hardware profile"
    )
    calibrate.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    calibrate.add_argument("--out", required=True, metavar="PATH", help="profile YAML to write")
    calibrate.add_argument(
        "--grid", choices=("full", "quick"), default="full", help="GEMM grid (quick: tests)"
    )
    calibrate.add_argument(
        "--world-sizes",
        metavar="N,M",
        help="all-to-all world sizes to measure (default 2 up to the cores or GPUs, at most 8)",
    )
    calibrate.add_argument("--dtype", help="GEMM dtype (default fp32 on CPU, fp16 on CUDA)")
    calibrate.add_argument("--name", help="profile name (default local-cpu or the GPU's name)")
    calibrate.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="CARD",
        help="also time this model card's operators as the reference executor runs them "
        "(a card name or YAML path; repeatable)",
    )


def add_validate_parser(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate", help="simulate and really run scenarios, and report the prediction errors"
    )
    validate.add_argument("scenarios", nargs="+", help="scenario files or folders of them")
    validate.add_argument("--out", required=True, metavar="DIR", help="report folder")
    validate.add_argument(
        "--profile",
        metavar="PATH",
        help="calibrated profile to predict from (default: calibrate first, into DIR)",
    )
    validate.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    validate.add_argument(
        "--repeats", type=int, default=3, help="real runs per scenario (default 3)"
    )
    validate.add_argument(
        "--replay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serving scenarios: also run the simulator's exact step plans on the reference "
        "and compare each step's latency one to one (default: --replay)",
    )
    validate.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="METRIC=FRACTION",
        help="fail if |error| of METRIC (or 'timing', 'memory') exceeds FRACTION in a scenario",
    )


def _world_sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise MoesimError(f"--world-sizes: expected numbers like 2,4, got {text!r}") from None
    if any(size < 2 for size in sizes):
        raise MoesimError(f"--world-sizes: an all-to-all needs at least 2 ranks, got {text!r}")
    return sizes


def _model_cards(names: list[str]) -> list:
    """The model cards named on the command line (a shipped name or a YAML path)."""
    from moesim.config import find_file, load_model_card, shipped_names

    cards = []
    for name in names:
        path = find_file("model", name, Path.cwd())
        if path is None:
            known = ", ".join(shipped_names("model"))
            raise MoesimError(f"--model {name}: no such model card (shipped: {known})")
        cards.append(load_model_card(path))
    return cards


def run_calibrate(args: argparse.Namespace, console: Console) -> None:
    _write_calibrated(
        console,
        args.device,
        Path(args.out),
        grid=args.grid,
        world_sizes=_world_sizes(args.world_sizes),
        dtype=args.dtype,
        name=args.name,
        models=_model_cards(args.model),
    )


def _write_calibrated(
    console: Console,
    device: str,
    out: Path,
    *,
    grid: str = "full",
    world_sizes: list[int] | None = None,
    dtype: str | None = None,
    name: str | None = None,
    models: list | None = None,
) -> None:
    """Calibrate ``device`` (and the operators of ``models``, model cards) into the profile
    ``out``, with a progress bar and a summary."""
    try:
        from moesim.calibrate import calibrate_profile, write_profile
    except ImportError:
        raise MoesimError("calibration needs torch: pip install 'moesim[torch]'") from None
    if out.is_dir():
        raise MoesimError(f"--out {out}: is a folder; expected a profile file such as x.yaml")
    writable_dir(out.parent, f"--out {out}")  # before minutes of measuring
    with progress_bar("calibrating") as progress:
        task = progress.add_task("benchmarks", total=None)

        def report(stage: str, done: int, total: int) -> None:
            progress.update(task, description=stage, completed=done, total=total)

        profile = calibrate_profile(
            device,
            grid=grid,
            world_sizes=world_sizes,
            dtype=dtype,
            name=name,
            models=models or [],
            on_progress=report,
        )
    write_profile(profile, out)
    compute = profile["compute"]
    flops = ", ".join(f"{k} {v / 1e9:,.1f} GFLOP/s" for k, v in compute["peak_flops"].items())
    console.print(
        f"{profile['name']}: peak {flops}, memory "
        f"{profile['memory']['bandwidth'] / 1e9:.1f} GB/s, launch "
        f"{compute['launch_overhead'] * 1e6:.1f} us"
        + "".join(f"; model {t['model']}" for t in compute.get("models") or [])
    )
    print(f"wrote {out}", file=sys.stderr)


def _tolerances(texts: list[str]) -> dict[str, float]:
    from moesim.validate import EXACT_METRICS, TOLERABLE

    tolerances = {}
    for text in texts:
        metric, _, value = text.partition("=")
        if metric in EXACT_METRICS:
            raise MoesimError(f"--tolerance: {metric} must match exactly; it takes no tolerance")
        if metric not in TOLERABLE:
            raise MoesimError(
                f"--tolerance {metric}: unknown metric (expected one of {', '.join(TOLERABLE)})"
            )
        try:
            tolerances[metric] = float(value)
        except ValueError:
            raise MoesimError(f"--tolerance: expected METRIC=FRACTION, got {text!r}") from None
        if not tolerances[metric] >= 0 or math.isinf(tolerances[metric]):
            raise MoesimError(f"--tolerance {metric}: expected a fraction >= 0, got {value!r}")
    return tolerances


def _replay_table(replays: list) -> Table:
    table = Table(title="serving replay: step latency, one to one", title_justify="left")
    for column in ("scenario", "steps", "exact", "median |error|", "median error", "p90 |error|"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for r in replays:
        table.add_row(
            r.scenario,
            str(r.steps),
            "yes" if r.token_mismatches == 0 else f"no ({r.token_mismatches})",
            f"{100 * r.median_abs_error:.1f}%",
            f"{100 * r.median_error:+.1f}%",
            f"{100 * r.p90_abs_error:.1f}%",
        )
    return table


def run_validate(args: argparse.Namespace, console: Console) -> int:
    try:
        from moesim.validate import scenario_files, summarise, validate
        from moesim.validate.runner import scenario_models
    except ImportError:
        raise MoesimError("validation needs torch: pip install 'moesim[torch]'") from None

    tolerances = _tolerances(args.tolerance)
    if args.repeats < 1:
        raise MoesimError(f"--repeats: expected at least 1, got {args.repeats}")
    scenario_files(args.scenarios)  # every path exists, before a calibration
    out = writable_dir(args.out, "--out")
    profile = Path(args.profile) if args.profile else out / "profile.yaml"
    calibration_load = None
    if args.profile is None:
        before = os.getloadavg()[0]
        models = scenario_models(args.scenarios)
        _write_calibrated(console, args.device, profile, models=models)
        calibration_load = (before, os.getloadavg()[0])
    elif not profile.is_file():
        raise MoesimError(f"--profile {profile}: no such hardware profile file")
    with progress_bar("validating") as progress:
        task = progress.add_task("runs", total=None)
        report = validate(
            args.scenarios,
            profile=profile,
            out=out,
            repeats=args.repeats,
            device=args.device,
            replay=args.replay,
            calibration_load=calibration_load,
            on_progress=lambda name, done, total: progress.update(
                task, description=name, completed=done, total=total
            ),
        )
    table = Table(title="prediction error over scenarios", title_justify="left")
    columns = ("metric", "scenarios", "median |error|", "median error", "max |error|")
    for column in (*columns, "median spread"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, stats in summarise(report.rows).items():
        table.add_row(
            metric,
            str(stats["scenarios"]),
            f"{100 * stats['median_abs_error']:.1f}%",
            f"{100 * stats['median_error']:+.1f}%",
            f"{100 * stats['max_abs_error']:.1f}%",
            "n/a" if math.isnan(stats["median_spread"]) else f"{100 * stats['median_spread']:.1f}%",
        )
    console.print(table)
    if report.replays:
        console.print(_replay_table(report.replays))
    for note in report.notes():
        console.print(f"note: {note}")
    for why in report.skipped.values():
        console.print(f"not run: {why}")
    failures = [
        f"{r.scenario}: {r.metric} predicted {r.predicted:g}, measured {r.measured:g} (must match)"
        for r in report.mismatches
    ]
    failures += [
        f"{r.scenario}: the replay ran {r.measured_steps} steps of the simulator's {r.steps}, "
        f"{r.token_mismatches} of them with other tokens (must match)"
        for r in report.replays
        if r.token_mismatches
    ]
    for row in report.rows:
        limit = tolerances.get(row.metric, tolerances.get(row.kind))
        if limit is not None and abs(row.error) > limit:
            failures.append(
                f"{row.scenario}: {row.metric} error {100 * row.error:.1f}% exceeds "
                f"{100 * limit:.1f}%"
            )
    if tolerances:
        failures += [f"not run with tolerances set: {why}" for why in report.skipped.values()]
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    for failure in failures:
        print(f"moesim: validation failed: {failure}", file=sys.stderr)
    return 1 if failures else 0
