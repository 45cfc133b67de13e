"""The serving loop: conservation, the low-load and high-load limits, Little's law,
determinism, and what serving refuses."""

import numpy as np
import pytest

from moesim.api import run
from moesim.cli import main
from moesim.metrics import PHASES
from tests.conftest import SIMPLE_PROFILE, TINY_MODEL, make_scenario, workload
from tests.sim.serving_cases import OUTPUT, PROMPT, fixed_latency, serving_workload


def _serving(
    rate=None,
    count=30,
    gpus=2,
    scheduler=None,
    prompt=None,
    output=None,
    seed=3,
    **changes,
):
    policies = {
        "gating": {"name": "dynamic"},
        "scheduler": scheduler or {"name": "continuous", "max_sequences": 8},
    }
    return make_scenario(
        seed=seed,
        cluster={"nodes": 1, "gpus_per_node": gpus, "device": SIMPLE_PROFILE},
        workload=serving_workload(count, rate, prompt, output),
        policies=policies,
        **changes,
    )


@pytest.mark.parametrize(
    "scheduler",
    [
        {"name": "continuous", "max_sequences": 4, "max_batch_tokens": 256},
        {"name": "chunked", "max_sequences": 4, "max_batch_tokens": 64, "chunk_tokens": 32},
        {"name": "static", "batch_size": 3, "timeout_s": 0.001},
    ],
    ids=["continuous", "chunked", "static"],
)
def test_every_request_completes_with_all_its_tokens(scheduler) -> None:
    lengths = {"distribution": "uniform", "low": 1, "high": 9}
    scenario = _serving(rate=2000.0, count=40, scheduler=scheduler, output=lengths)
    result, records = run(scenario)
    serving, requests = result.serving, records.serving.requests
    assert (serving.arrived, serving.completed, serving.running, serving.waiting) == (40, 40, 0, 0)
    # each token after a request's first has exactly one inter-token gap
    assert records.serving.itl_s.size == int((requests.output_tokens - 1).sum())
    assert np.all(requests.first_token_s >= requests.arrival_s)
    assert np.all(requests.finish_s >= requests.first_token_s)
    assert result.tokens.routed == result.tokens.processed  # dynamic gating drops nothing
    # every prompt token is prefilled once (no preemption here), every other token decoded once
    assert serving.preemptions == 0
    prefilled = records.serving.prefill_tokens.sum()
    decoded = records.serving.decode_tokens.sum()
    assert prefilled == requests.prompt_tokens.sum()
    assert decoded == (requests.output_tokens - 1).sum()
    assert serving.max_running <= 2 * scheduler.get("max_sequences", scheduler.get("batch_size"))


def test_at_low_load_ttft_is_one_prefill_and_tpot_one_sequence_decoding() -> None:
    # one GPU, requests 100 s apart: each runs alone
    _, records = run(_serving(rate=None, count=1, gpus=1))
    lone = records.serving.requests
    assert lone.ttft_s[0] == pytest.approx(fixed_latency("prefill", PROMPT))
    # decodes attend over PROMPT + 1 .. PROMPT + OUTPUT - 1 positions
    decodes = [fixed_latency("decode", PROMPT + k) for k in range(1, OUTPUT)]
    assert lone.tpot_s[0] == pytest.approx(np.mean(decodes))
    spaced = _serving(rate=None, count=4, gpus=1)
    spaced_requests = spaced.workload.requests.model_copy(
        update={
            "arrival": spaced.workload.requests.arrival.model_copy(
                update={"process": "constant", "rate": 0.01}
            )
        }
    )
    apart = spaced.model_copy(
        update={"workload": spaced.workload.model_copy(update={"requests": spaced_requests})}
    )
    result, _ = run(apart)
    assert result.serving.ttft_s.p99 == pytest.approx(lone.ttft_s[0])
    assert result.serving.tpot_s.p99 == pytest.approx(lone.tpot_s[0])
    assert result.serving.queue_s.p99 == 0.0


def test_at_high_load_throughput_saturates_and_queueing_grows() -> None:
    results = {}
    for rate in (2e6, 8e6):  # above the capacity of the test profile (~6e5 requests/s)
        results[rate], _ = run(_serving(rate=rate, count=60))
    offline, _ = run(_serving(rate=None, count=60))
    saturated = offline.serving.output_tokens_per_s
    for result in results.values():
        assert result.serving.output_tokens_per_s == pytest.approx(saturated, rel=0.15)
    assert results[8e6].serving.queue_s.mean > results[2e6].serving.queue_s.mean
    # all at once is the limit of ever higher rates; 8e6 is within sampling noise of it
    assert offline.serving.queue_s.mean > results[2e6].serving.queue_s.mean


def test_littles_law_holds_on_the_per_request_records() -> None:
    _, records = run(_serving(rate=3000.0, count=200))
    serving = records.serving
    # time-average of requests in the system, from the per-step queue rows
    starts = records.steps.start_s
    latency = records.steps.latency_s
    in_system = serving.running + serving.waiting
    busy = float((in_system * latency).sum())
    mean_in_system = busy / serving.duration_s
    arrival_rate = 200 / serving.duration_s
    e2e = serving.requests.e2e_s
    assert np.all(np.isfinite(e2e))
    assert mean_in_system == pytest.approx(arrival_rate * e2e.mean(), rel=0.1)
    assert starts.size == latency.size


def test_same_seed_same_serving_run_other_seed_other() -> None:
    a, _ = run(_serving(rate=2000.0, seed=5))
    b, _ = run(_serving(rate=2000.0, seed=5))
    c, _ = run(_serving(rate=2000.0, seed=6))
    assert a.serving == b.serving and a.per_step == b.per_step
    assert a.serving != c.serving


def test_a_serving_scenario_reloads_from_its_resolved_config() -> None:
    from moesim.config import Scenario

    for scenario in (_serving(rate=100.0), _serving(rate=None)):
        again = Scenario.model_validate(scenario.model_dump(mode="json"))
        assert again == scenario  # result.json's config runs again as it is


def test_what_serving_does_not_model_is_refused_in_one_line(tmp_path, capsys) -> None:
    import yaml

    scenario = _serving(rate=100.0).model_dump(mode="json")
    scenario["policies"]["cache"] = {"name": "lru", "slots_per_layer": 2}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "moesim: error: policies.cache: expert buffering is not simulated in serving yet"
    )


def test_the_chrome_trace_shows_steps_and_requests_as_async_slices(tmp_path) -> None:
    import json

    from moesim.api import write_outputs

    scenario = _serving(rate=20000.0, count=12)
    result, records = run(scenario, trace_steps=6)
    write_outputs(tmp_path, scenario, result, records)
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    steps = [e for e in events if e["ph"] == "X"]
    assert len(steps) == 2 * 6  # every GPU's compute stream, each traced step
    begins = {(e["id"], e["name"]): e["ts"] for e in events if e["ph"] == "b"}
    ends = {(e["id"], e["name"]): e["ts"] for e in events if e["ph"] == "e"}
    assert begins.keys() == ends.keys() and begins
    assert all(begins[key] < ends[key] for key in begins)
    requests = records.serving.requests
    for (request, name), ts in begins.items():
        expected = {"queue": requests.arrival_s, "prefill": requests.scheduled_s}.get(
            name, requests.first_token_s
        )[request]
        assert ts == pytest.approx(expected * 1e6)
    window_end = max(e["ts"] + e["dur"] for e in steps) / 1e6
    assert {r for r, _ in begins} == set(np.flatnonzero(requests.arrival_s < window_end))


def test_the_reference_executor_serves_in_real_time_and_writes_its_requests(
    tmp_path, capsys
) -> None:
    import json

    import pyarrow.parquet as pq
    import yaml

    path = tmp_path / "s.yaml"
    scenario = _serving(rate=400.0, count=6, gpus=1)
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    out = tmp_path / "out"
    assert main(["run", str(path), "--executor", "reference", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["executor"] == "reference"
    serving = printed["serving"]
    assert (serving["arrived"], serving["completed"], serving["waiting"]) == (6, 6, 0)
    assert printed["tokens"]["routed"] == 6 * (PROMPT + OUTPUT - 1) * scenario.model.top_k
    table = pq.read_table(out / "requests.parquet").to_pydict()
    assert table["output_tokens"] == [OUTPUT] * 6
    arrival, first, finish = (
        np.array(table[k]) for k in ("arrival_s", "first_token_s", "finish_s")
    )
    assert (first > arrival).all() and (finish >= first).all()


def test_a_static_batch_that_never_fills_leaves_its_requests_waiting() -> None:
    # 2 requests, batches of 4 and no timeout: nothing ever runs, and the run says so
    result, records = run(
        _serving(rate=100.0, count=2, scheduler={"name": "static", "batch_size": 4})
    )
    assert result.steps == 0 and records.steps.breakdown_NP.shape == (0, len(PHASES))
    serving = result.serving
    assert (serving.arrived, serving.completed, serving.running, serving.waiting) == (2, 0, 0, 2)
    assert serving.ttft_s.mean is None and serving.output_tokens_per_s == 0.0


def test_the_plans_it_reports_are_the_steps_it_ran() -> None:
    from moesim.sim.serving import simulate_serving

    reported = []
    records = simulate_serving(
        _serving(rate=2000.0, count=20), on_plans=lambda plans, n: reported.append((plans, n))
    )
    serving = records.serving
    assert sum(n for _, n in reported) == records.steps.latency_s.size
    # each plan's tokens, repeated over its steps, are the per-step rows in order
    prefill = np.concatenate([np.full(n, sum(p.prefill_tokens for p in ps)) for ps, n in reported])
    decode = np.concatenate([np.full(n, sum(p.decode_tokens for p in ps)) for ps, n in reported])
    np.testing.assert_array_equal(prefill, serving.prefill_tokens)
    np.testing.assert_array_equal(decode, serving.decode_tokens)
    # every prompt token is prefilled once (no preemption at this load), every other once decoded
    assert prefill.sum() == 20 * PROMPT
    assert decode.sum() == 20 * (OUTPUT - 1)


def test_progress_counts_simulated_seconds_up_to_the_last_arrival() -> None:
    from moesim.sim.serving import simulate_serving

    reported = []
    records = simulate_serving(
        _serving(rate=200.0, count=20), on_progress=lambda now, until: reported.append((now, until))
    )
    last_arrival = float(records.serving.requests.arrival_s.max())
    nows = [now for now, _ in reported]
    assert nows == sorted(nows) and nows[-1] == pytest.approx(records.serving.duration_s, abs=0.05)
    # the total is the last arrival until the run passes it, then the run's time
    assert all(until == pytest.approx(max(last_arrival, now), abs=0.05) for now, until in reported)


@pytest.mark.parametrize(
    ("gpus", "layout"),
    [
        (2, {"cluster.parallel": {"attention_tp": 2, "expert_tp": 2}}),
        (1, {"policies.overlap": {"name": "two_batch"}}),
    ],
    ids=["tp2", "two_batch"],
)
def test_a_lone_request_costs_the_fixed_batch_steps_of_its_layout(gpus, layout) -> None:
    """Under tensor-parallel attention and experts (one group, one expert rank), or two
    overlapped micro-batches, a lone request's TTFT is the fixed-batch prefill of its prompt
    in the same layout and its TPOT the mean of the one-sequence decodes."""
    model = {**TINY_MODEL, "heads": 2}

    def with_layout(scenario):
        data = scenario.model_dump()
        for key, value in layout.items():
            section, field = key.split(".")
            data[section][field] = value
        return type(scenario).model_validate(data)

    def fixed(phase: str, seq_len: int) -> float:
        scenario = make_scenario(
            model=model,
            cluster={"nodes": 1, "gpus_per_node": gpus, "device": SIMPLE_PROFILE},
            workload=workload(phase=phase, batch_size=1, seq_len=seq_len, steps=1),
        )
        return run(with_layout(scenario))[0].latency_s.p50

    served = with_layout(_serving(rate=None, count=1, gpus=gpus, model=model))
    lone = run(served)[1].serving.requests
    assert lone.ttft_s[0] == pytest.approx(fixed("prefill", PROMPT), rel=1e-9)
    decodes = [fixed("decode", PROMPT + k) for k in range(1, OUTPUT)]
    assert lone.tpot_s[0] == pytest.approx(np.mean(decodes), rel=1e-9)


def test_tensor_parallel_groups_share_their_kv_cache_by_head() -> None:
    scenario = _serving(rate=2000.0, count=16, gpus=2, model={**TINY_MODEL, "heads": 2})
    data = scenario.model_dump()
    data["cluster"]["parallel"] = {"attention_tp": 2}
    tp = type(scenario).model_validate(data)
    (dp_result, dp), (tp_result, tp_records) = run(scenario), run(tp)
    assert (tp_result.serving.completed, tp_result.serving.waiting) == (16, 0)
    assert tp_result.serving.kv_cache.capacity_blocks >= dp_result.serving.kv_cache.capacity_blocks
    # one group; each GPU holds half of every token's K and V (heads 2 of 2 wide, 2 layers,
    # fp32: 64 B a token), for the group's blocks of 16 tokens
    blocks = tp_result.serving.kv_cache.capacity_blocks
    assert tp_records.devices.kv_cache_bytes.tolist() == [blocks * 16 * 64 / 2] * 2
    per_gpu = dp_result.serving.kv_cache.capacity_blocks / 2
    assert dp.devices.kv_cache_bytes.tolist() == [per_gpu * 16 * 64] * 2
