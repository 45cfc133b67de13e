"""``moesim trace``: capture routing from a local Hugging Face model, convert published traces,
and describe a trace (skew, locality, co-activation), with plots; convert request traces."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from moesim.errors import MoesimError
from moesim.files import json_text
from moesim.progress import progress_bar
from moesim.workload import (
    Trace,
    check_ids,
    load_request_trace,
    read_trace,
    save_request_trace,
    save_trace,
)
from moesim.workload.convert import FORMATS, convert
from moesim.workload.trace_stats import layer_stats

__all__ = ["add_trace_parser", "run_trace"]


def add_trace_parser(commands: argparse._SubParsersAction) -> None:
    trace = commands.add_parser("trace", help="capture, convert and describe routing traces")
    actions = trace.add_subparsers(dest="action", required=True)
    capture = actions.add_parser("capture", help="record routing from a local HF MoE model")
    capture.add_argument("--model", help="local Hugging Face checkpoint folder")
    capture.add_argument("--text", required=True, help="text file (UTF-8) to run through it")
    capture.add_argument("--out", required=True, help="trace .npz to write")
    capture.add_argument("--phase", choices=("prefill", "decode"), default="prefill")
    capture.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    capture.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    capture.add_argument("--new-tokens", type=int, default=16, help="decode steps")
    capture.add_argument("--max-steps", type=int, help="stop after this many steps")
    stats = actions.add_parser("stats", help="per-layer skew, locality and co-activation")
    stats.add_argument("trace", help="trace .npz")
    stats.add_argument("--plot", metavar="DIR", help="write popularity and heatmap PNGs")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    conv = actions.add_parser("convert", help="convert a published trace layout to .npz")
    conv.add_argument("inputs", nargs="+", help="Parquet files/folder (flame) or JSONL files")
    conv.add_argument("--out", required=True, help="trace .npz to write")
    conv.add_argument("--format", choices=FORMATS, help="default: from the first input")
    conv.add_argument("--tokens-per-step", type=int, help="flame: 2048; megatron: a step's")
    conv.add_argument("--num-experts", type=int, help="experts per layer (default: max id + 1)")
    conv.add_argument("--model", help="model name for the metadata")
    conv.add_argument(
        "--phase",
        choices=("prefill", "decode"),
        default="prefill",
        help="the phase the trace recorded (metadata)",
    )
    requests = actions.add_parser(
        "convert-requests",
        help="convert a request trace (Vidur/Splitwise, Azure, Mooncake, ...) to moesim's CSV",
    )
    requests.add_argument("input", help="request trace: CSV, JSON Lines or JSON")
    requests.add_argument("output", help="CSV to write: arrival_s,prompt_tokens,output_tokens")
    requests.add_argument("--count", type=int, help="convert only the first COUNT requests")


def _positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise MoesimError(f"{name}: expected a positive number, got {value}")


def _capture(args: argparse.Namespace) -> Path:
    from moesim.capture import capture

    for value, name in (
        (args.seq_len, "--seq-len"),
        (args.batch_size, "--batch-size"),
        (args.new_tokens, "--new-tokens"),
        (args.max_steps, "--max-steps"),
    ):
        _positive(value, name)
    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MoesimError(f"--text {args.text}: cannot read: {error}") from None
    _check_out(args.out)
    with progress_bar("capturing", "steps") as progress:
        task = progress.add_task("steps", total=None)
        trace = capture(
            args.model,
            [line for line in text.splitlines() if line.strip()],
            phase=args.phase,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            new_tokens=args.new_tokens,
            max_steps=args.max_steps,
            on_step=lambda done, total: progress.update(task, completed=done, total=total),
        )
    return _save(args.out, trace)


def _convert(args: argparse.Namespace) -> Path:
    import datetime

    _positive(args.tokens_per_step, "--tokens-per-step")
    _positive(args.num_experts, "--num-experts")
    _check_out(args.out)
    trace = convert([Path(p) for p in args.inputs], args.format, args.tokens_per_step)
    ids = trace.expert_ids
    experts = args.num_experts or int(ids.max()) + 1
    check_ids(ids, experts, args.inputs[0])
    metadata = {
        **trace.metadata,
        "model": args.model or "unknown",
        "num_experts": experts,
        "top_k": int(ids.shape[3]),
        "phase": args.phase,
        "date": datetime.date.today().isoformat(),
    }
    return _save(args.out, Trace(ids, trace.gate_weights, metadata))


def _check_out(out: str) -> None:
    if Path(out).is_dir():
        raise MoesimError(f"--out {out}: is a folder; expected a trace file such as x.npz")


def _save(out: str, trace: Trace) -> Path:
    try:
        return save_trace(
            out, trace.expert_ids, gate_weights=trace.gate_weights, metadata=trace.metadata
        )
    except OSError as error:
        raise MoesimError(f"--out {out}: cannot write: {error.strerror or error}") from None


def _stats(args: argparse.Namespace, console: Console) -> None:
    trace = read_trace(args.trace)
    check_ids(trace.expert_ids, trace.num_experts, args.trace)
    if args.plot and Path(args.plot).exists() and not Path(args.plot).is_dir():
        raise MoesimError(f"--plot {args.plot}: exists and is not a folder")
    stats = layer_stats(trace.expert_ids, trace.num_experts)
    if args.json:
        document = {"metadata": trace.metadata, "layers": [vars(s) for s in stats]}
        print(json_text(document, "--json", indent=None))
    else:
        n, layers, tokens, top_k = trace.expert_ids.shape
        meta = trace.metadata
        console.print(
            Text.assemble(
                (args.trace, "bold"),
                f": {meta.get('model', 'unknown model')}, {n} steps x {tokens} tokens, "
                f"{layers} MoE layers, {trace.num_experts} experts, top-{top_k} "
                f"({meta.get('source', 'source not recorded')})",
            )
        )
        table = Table(title_justify="left")
        for column in ("layer", "zipf s", "step s", "busiest", "reuse", "persist", "top pair"):
            table.add_column(column, justify="right")
        for s in stats:
            i, j, share = s.strongest_pair
            table.add_row(
                str(s.layer),
                f"{s.zipf_exponent:.2f}",
                f"{s.step_skew:.2f}",
                f"{s.busiest_share:.3f}",
                f"{s.temporal_locality:.3f}",
                f"{s.persistence:.3f}",
                f"{i}+{j}: {share:.3f}",
            )
        console.print(table)
        console.print(
            "zipf s: exponent of the layer's popularity; step s: within a step, averaged; "
            "busiest: top expert's share; reuse: chance an expert used in a step is used in the "
            "next; persist: correlation of consecutive steps' loads; top pair: most "
            "co-activated experts and the share of tokens choosing both"
        )
    if args.plot:
        from moesim.workload.trace_plots import plot_stats

        for path in plot_stats(stats, Path(args.plot), Path(args.trace).stem):
            print(f"wrote {path}", file=sys.stderr)


def _convert_requests(args: argparse.Namespace, console: Console) -> None:
    _positive(args.count, "--count")
    if Path(args.output).is_dir():
        raise MoesimError(f"{args.output}: is a folder; expected a CSV file to write")
    requests = load_request_trace(args.input, args.count)
    try:
        save_request_trace(requests, args.output)
    except OSError as error:
        raise MoesimError(f"{args.output}: cannot write: {error.strerror or error}") from None
    span = float(requests.arrival_s[-1] - requests.arrival_s[0])
    console.print(
        f"{len(requests):,} requests over {span:,.3f} s, {int(requests.prompt_tokens.sum()):,} "
        f"prompt and {int(requests.output_tokens.sum()):,} output tokens"
    )
    print(f"wrote {args.output}", file=sys.stderr)


def run_trace(args: argparse.Namespace, console: Console) -> None:
    if args.action == "stats":
        _stats(args, console)
        return
    if args.action == "convert-requests":
        _convert_requests(args, console)
        return
    written = _capture(args) if args.action == "capture" else _convert(args)
    trace = read_trace(written)
    n, layers, tokens, top_k = trace.expert_ids.shape
    console.print(f"{n} steps x {tokens} tokens, {layers} MoE layers, top-{top_k}")
    print(f"wrote {written}", file=sys.stderr)
