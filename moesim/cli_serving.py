"""What ``moesim run`` prints for a serving run: requests, latencies users feel, goodput."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from moesim.metrics.serving import Percentiles, ServingResult

__all__ = ["print_serving"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:,.1f}"


def print_serving(console: Console, serving: ServingResult) -> None:
    console.print(
        f"requests    {serving.arrived:,} arrived, {serving.completed:,} completed, "
        f"{serving.running:,} running and {serving.waiting:,} waiting at the end; "
        f"{serving.preemptions:,} preemptions, at most {serving.max_running:,} running"
    )
    table = Table(title="per request (ms)", title_justify="left")
    for column in ("metric", "mean", "p50", "p90", "p99"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    rows: dict[str, Percentiles] = {
        "TTFT": serving.ttft_s,
        "TPOT": serving.tpot_s,
        "ITL": serving.itl_s,
        "E2E": serving.e2e_s,
        "queue": serving.queue_s,
    }
    if serving.kv_transfer_s is not None:
        rows["KV transfer"] = serving.kv_transfer_s
    for name, p in rows.items():
        table.add_row(name, _ms(p.mean), _ms(p.p50), _ms(p.p90), _ms(p.p99))
    console.print(table)
    console.print(
        f"tokens/s    {serving.input_tokens_per_s:,.0f} in, {serving.output_tokens_per_s:,.0f} out"
    )
    if serving.slo_attainment is not None:
        met = "met" if serving.slo_met else "missed"
        console.print(
            f"SLO         {met}; {100 * serving.slo_attainment:.1f}% of requests within it, "
            f"goodput {serving.goodput_requests_per_s:,.2f} requests/s"
        )
    kv = serving.kv_cache
    console.print(
        f"KV cache    {kv.capacity_blocks:,} blocks; peak {kv.peak_blocks:,}, "
        f"mean {kv.mean_blocks:,.1f} in use"
    )
