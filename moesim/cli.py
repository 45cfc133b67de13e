"""The ``moesim`` command: a thin layer over ``moesim.api``.

Every MoesimError becomes one line on stderr and exit status 2; nothing is written before the
scenario has loaded and validated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

import moesim
from moesim import api
from moesim.cli_advise import add_advise_parser, run_advise
from moesim.cli_list import add_list_parser, run_list
from moesim.cli_serving import print_serving
from moesim.cli_sweep import add_sweep_parsers, run_plot, run_sweep_command
from moesim.cli_trace import add_trace_parser, run_trace
from moesim.cli_validate import (
    add_calibrate_parser,
    add_validate_parser,
    run_calibrate,
    run_validate,
)
from moesim.config import Scenario
from moesim.errors import MoesimError
from moesim.files import json_text, writable_dir
from moesim.metrics import Result
from moesim.progress import progress_bar

__all__ = ["main"]

GIB = 2.0**30


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moesim", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"moesim {moesim.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="simulate a scenario and print its predicted metrics")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field by its dotted path, e.g. workload.batch_size=128",
    )
    run.add_argument("--out", metavar="DIR", help="write DIR/result.json")
    run.add_argument(
        "--chrome-trace",
        action="store_true",
        help="also write DIR/trace.json (Perfetto / chrome://tracing)",
    )
    run.add_argument(
        "--trace-steps",
        type=int,
        default=3,
        metavar="N",
        help="steps in the Chrome trace (default 3)",
    )
    run.add_argument("--json", action="store_true", help="print result.json to stdout")
    run.add_argument(
        "--executor",
        choices=("sim", "reference"),
        default="sim",
        help="sim: predict (default); reference: run it for real with torch and measure",
    )
    _profile_options(run)
    add_calibrate_parser(commands)
    add_validate_parser(commands)
    add_trace_parser(commands)
    add_sweep_parsers(commands)
    add_advise_parser(commands)
    add_list_parser(commands)
    return parser


def _profile_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--profile", metavar="PATH", help="hardware profile to use instead of the scenario's"
    )
    command.add_argument(
        "--device", default="cpu", help="where the reference executor runs: cpu or cuda[:N]"
    )


def _batching(scenario: Scenario) -> str:
    workload = scenario.workload
    if workload.phase == "serving":
        return f"{workload.requests.count:,} requests, {scenario.policies.scheduler.name} scheduler"
    return f"batch {workload.batch_size}"


def _layout(scenario: Scenario) -> str:
    """The layout and overlap where they are not the default (DP attention, EP experts)."""
    parallel, overlap = scenario.cluster.parallel, scenario.policies.overlap.name
    parts = [
        f"{name} {value}"
        for name, value in (
            ("attention TP", parallel.attention_tp),
            ("expert TP", parallel.expert_tp),
        )
        if value > 1
    ]
    if overlap != "none":
        parts.append(f"overlap {overlap}")
    for pool in scenario.cluster.pools or []:
        cluster = scenario.cluster.pool(pool)
        tp = cluster.parallel.attention_tp, cluster.parallel.expert_tp
        parts.append(
            f"{pool.role} {cluster.nodes}x{cluster.gpus_per_node} {cluster.device.name}"
            + (f" TP {tp[0]}/{tp[1]}" if tp != (1, 1) else "")
        )
    return f" ({', '.join(parts)})" if parts else ""


def _summary(console: Console, scenario: Scenario, result: Result) -> None:
    cluster = scenario.cluster
    console.print(
        Text.assemble(
            (scenario.name, "bold"),
            f": {scenario.model.name} on {cluster.nodes}x{cluster.gpus_per_node} "
            f"{cluster.device.name}{_layout(scenario)}, {result.phase}, {_batching(scenario)}, "
            f"gating {scenario.policies.gating.name}, routing drawn as "
            f"{result.routing_resolution}",
        )
    )
    if result.serving is not None:
        print_serving(console, result.serving)
    console.print(
        f"throughput  {result.throughput_tokens_per_s:,.0f} tokens/s processed, "
        f"{result.output_tokens_per_s:,.0f} tokens/s out"
    )
    lat = result.latency_s
    console.print(
        f"latency     mean {lat.mean * 1e3:.3f} ms  p50 {lat.p50 * 1e3:.3f} ms  "
        f"p99 {lat.p99 * 1e3:.3f} ms per step"
    )
    table = Table(title="time breakdown (critical path)", title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    # of the steps' time: the pools of a disaggregated run are busy at once
    total = sum(result.time_breakdown_s.values()) or 1.0
    for phase, seconds in result.time_breakdown_s.items():
        table.add_row(phase, f"{seconds:.4f}", f"{100 * seconds / total:.1f}%")
    console.print(table)
    memory = result.memory
    peaks = memory.peak_bytes_per_device
    console.print(
        f"memory/GPU  peak {max(peaks) / GIB:.2f} GiB of {memory.capacity_bytes / GIB:.1f} GiB "
        f"(weights {max(memory.weights_bytes_per_device) / GIB:.2f}, KV cache "
        f"{max(memory.kv_cache_bytes_per_device) / GIB:.2f}, activations "
        f"{max(memory.activation_peak_bytes_per_device) / GIB:.2f} GiB; busiest GPU)"
    )
    if memory.out_of_memory:
        console.print(
            Text.assemble(("out of memory", "bold red"), ": the peak exceeds the device's capacity")
        )
    tokens = result.tokens
    console.print(
        f"tokens      routed {tokens.routed:,}  processed {tokens.processed:,}  "
        f"dropped {tokens.dropped:,}  padded {tokens.padded:,} (token-expert slots)"
    )
    kinds = ", ".join(f"{kind} {b / 1e9:.3f}" for kind, b in result.alltoall_bytes_by_kind.items())
    console.print(f"all-to-all  {result.alltoall_bytes / 1e9:.3f} GB moved ({kinds})")
    placement = result.placement
    if placement.max_load is not None:
        console.print(
            f"placement   {placement.name}: load imbalance (max/mean) "
            f"{result.load_imbalance:.2f}; busiest GPU's share of a layer's expert tokens "
            f"{placement.avg_max_load:.3f} on average, {placement.max_load:.3f} at worst"
        )
    cache = result.cache
    if cache is not None:
        rate = "n/a" if cache.hit_rate is None else f"{cache.hit_rate:.3f}"
        console.print(
            f"cache       {cache.name}, {cache.slots_per_layer} slots/layer: hit rate {rate} "
            f"({cache.hits:,} hits, {cache.misses:,} misses), "
            f"{cache.bytes_host_to_device / 1e9:.3f} GB host-to-device, "
            f"compute waited {cache.stall_s:.4f} s for copies, experts "
            f"{max(cache.expert_bytes_per_device) / GIB:.2f} GiB/GPU"
        )
    if result.executor == "reference":
        console.print(
            f"measured on {result.device}: {result.simulated_seconds:.3f} s of steps in "
            f"{result.wall_seconds:.2f} s wall"
        )
        return
    console.print(
        f"simulated {result.simulated_seconds:.3f} s in {result.wall_seconds:.2f} s "
        f"wall ({_speed(result.simulated_seconds, result.wall_seconds)}, "
        f"{result.events} events)"
    )


def _speed(simulated_s: float, wall_s: float) -> str:
    """Simulated over wall time to three significant digits (``0.0123x``, ``1,234x``)."""
    if wall_s <= 0:
        return "no wall time measured"
    ratio = simulated_s / wall_s
    shown = f"{ratio:,.0f}" if ratio >= 1000 else f"{float(f'{ratio:.3g}'):g}"
    return f"{shown}x real time"


def _profile_override(profile: str | None) -> list[str]:
    if profile is None:
        return []
    path = Path(profile)
    if not path.is_file():
        raise MoesimError(f"--profile {profile}: no such hardware profile file")
    return [f"cluster.device={path.resolve()}"]


def _run(args: argparse.Namespace, console: Console) -> None:
    scenario = api.load_scenario(args.scenario, args.overrides + _profile_override(args.profile))
    if args.executor == "reference" and args.chrome_trace:
        raise MoesimError("--chrome-trace: the reference executor records no timeline")
    trace_steps = args.trace_steps if args.chrome_trace else 0
    if args.chrome_trace and not args.out:
        raise MoesimError("--chrome-trace needs --out DIR")
    if args.chrome_trace and args.trace_steps < 1:
        raise MoesimError(f"--trace-steps: expected at least 1, got {args.trace_steps}")
    if args.out:
        writable_dir(args.out, "--out")
    label = "simulating" if args.executor == "sim" else "running for real"
    serving = scenario.workload.phase == "serving"
    # serving: simulated seconds up to the last arrival (the reference: finished requests)
    unit = ("simulated s" if args.executor == "sim" else "requests") if serving else "steps"
    with progress_bar(label, unit) as progress:
        task = progress.add_task(unit, total=0 if serving else scenario.workload.steps)
        result, records = api.run(
            scenario,
            executor=args.executor,
            device=args.device,
            trace_steps=trace_steps,
            on_step=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if args.out:
        written = api.write_outputs(args.out, scenario, result, records)
    if args.json:
        print(json_text(result.model_dump(mode="json"), "--json"))
    else:
        _summary(console, scenario, result)
    if args.out:
        for path in written:
            print(f"wrote {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(highlight=False, markup=False)  # names are text, never markup
    try:
        if args.command == "run":
            _run(args, console)
        elif args.command == "calibrate":
            run_calibrate(args, console)
        elif args.command == "validate":
            return run_validate(args, console)
        elif args.command == "trace":
            run_trace(args, console)
        elif args.command == "sweep":
            return run_sweep_command(args, console)
        elif args.command == "plot":
            run_plot(args, console)
        elif args.command == "advise":
            return run_advise(args, console)
        elif args.command == "list":
            run_list(args)
    except MoesimError as error:
        print(f"moesim: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
