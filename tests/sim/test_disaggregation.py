"""Prefill/decode disaggregation: a lone request's TTFT and TPOT by hand, the KV transfer's
bytes, link, ports and layer-by-layer overlap, conservation, and what pools refuse."""

import re

import numpy as np
import pytest

from moesim.api import run
from moesim.cli import main
from tests.conftest import SIMPLE_PROFILE, SMALL_MOE, TINY_MODEL, make_scenario, workload
from tests.sim.serving_cases import OUTPUT, PROMPT, fixed_latency, serving_workload

# TINY_MODEL: K and V of d_model 4 in fp32 over 2 layers
KV_BYTES_PER_TOKEN = 2 * 4 * 4 * 2
NVLINK, NETWORK = (1e9, 1e-6), (1e8, 1e-5)  # SIMPLE_PROFILE: bandwidth, latency


def _pools(prefill=None, decode=None, gpus_per_node=1, nodes=None, **pool):
    prefill = {"role": "prefill", "nodes": 1, **pool, **(prefill or {})}
    decode = {"role": "decode", "nodes": 1, **(decode or {})}
    cluster = {"gpus_per_node": gpus_per_node, "device": SIMPLE_PROFILE, "pools": [prefill, decode]}
    return cluster if nodes is None else {**cluster, "nodes": nodes}


def _serving(cluster, count=1, rate=None, output=None, prompt=None, model=None, **policies):
    return make_scenario(
        seed=2,
        model=dict(model or TINY_MODEL),
        cluster=cluster,
        workload=serving_workload(count, rate, prompt, output),
        policies={
            "gating": {"name": "dynamic"},
            "scheduler": {"name": "continuous", "max_sequences": 8},
            **policies,
        },
    )


def _transfer(link, tokens=PROMPT) -> float:
    bandwidth, latency = link
    return latency + tokens * KV_BYTES_PER_TOKEN / bandwidth


@pytest.mark.parametrize(
    ("cluster", "link"),
    [
        (
            _pools(gpus_per_node=2, prefill={"gpus_per_node": 1}, decode={"gpus_per_node": 1}),
            NVLINK,
        ),
        (_pools(gpus_per_node=1), NETWORK),
    ],
    ids=["one-node-nvlink", "two-nodes-network"],
)
def test_a_lone_request_waits_one_prefill_and_its_kv_transfer(cluster, link) -> None:
    cluster["pools"][0]["kv_transfer"] = "after_prefill"
    result, records = run(_serving(cluster))
    requests = records.serving.requests
    prefill, transfer = fixed_latency("prefill", PROMPT), _transfer(link)
    assert requests.ttft_s[0] == pytest.approx(prefill + transfer, rel=1e-9)
    assert requests.kv_transfer_s[0] == pytest.approx(transfer, rel=1e-9)
    # the decode pool decodes it alone: contexts PROMPT + 1 .. PROMPT + OUTPUT - 1
    decodes = [fixed_latency("decode", PROMPT + k) for k in range(1, OUTPUT)]
    assert requests.tpot_s[0] == pytest.approx(np.mean(decodes), rel=1e-9)
    assert result.serving.kv_transfer_s.p50 == pytest.approx(transfer, rel=1e-9)
    assert len(result.memory.peak_bytes_per_device) == 2


@pytest.mark.parametrize("flops", [1e12, 1e8], ids=["transfer-bound", "compute-bound"])
def test_layer_by_layer_sending_overlaps_the_prompts_last_step(flops) -> None:
    device = {
        **SIMPLE_PROFILE,
        "compute": {**SIMPLE_PROFILE["compute"], "peak_flops": {"fp32": flops}},
    }
    prefill = fixed_latency("prefill", PROMPT, device)
    transfer = _transfer(NETWORK)
    assert (transfer > prefill) == (flops == 1e12)
    cluster = {**_pools(gpus_per_node=1), "device": device}  # layerwise is the default
    _, records = run(_serving(cluster))
    # a two-stage pipeline over the 2 layers: a + b + max(a, b), a = prefill / 2, b = transfer / 2
    a, b = prefill / 2, transfer / 2
    assert records.serving.requests.ttft_s[0] == pytest.approx(a + b + max(a, b), rel=1e-9)


def test_prompts_done_together_share_their_ports_one_after_another() -> None:
    cluster = _pools(gpus_per_node=1)
    cluster["pools"][0]["kv_transfer"] = "after_prefill"
    _, records = run(_serving(cluster, count=3))
    first = np.sort(records.serving.requests.first_token_s)
    # one prefill step ends all three; one sending and one receiving port: back to back
    assert np.diff(first) == pytest.approx([_transfer(NETWORK)] * 2, rel=1e-9)


def test_the_busier_side_of_a_tensor_parallel_transfer_sets_its_bytes() -> None:
    kv_per_token = 2 * 32 * 4 * 2  # SMALL_MOE: d_model 32 in fp32, 2 layers, 2 KV heads
    times = {}
    for prefill_tp, decode_tp in ((1, 1), (2, 2), (1, 2), (2, 1)):
        cluster = _pools(
            gpus_per_node=2,
            prefill={"parallel": {"attention_tp": prefill_tp, "expert_tp": 1}},
            decode={"parallel": {"attention_tp": decode_tp, "expert_tp": 1}},
            kv_transfer="after_prefill",
        )
        _, records = run(_serving(cluster, model=SMALL_MOE))
        times[prefill_tp, decode_tp] = records.serving.requests.kv_transfer_s[0]
    whole = NETWORK[1] + PROMPT * kv_per_token / NETWORK[0]
    half = NETWORK[1] + PROMPT * kv_per_token / 2 / NETWORK[0]
    assert times[1, 1] == pytest.approx(whole, rel=1e-9)
    assert times[2, 2] == pytest.approx(half, rel=1e-9)
    assert times[1, 2] == times[2, 1] == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize("router", ["round_robin", "least_loaded"])
def test_every_request_completes_with_all_its_tokens(router) -> None:
    lengths = {"distribution": "uniform", "low": 1, "high": 9}
    cluster = _pools(gpus_per_node=2, prefill={"gpus_per_node": 2}, decode={"nodes": 2})
    result, records = run(_serving(cluster, count=60, rate=3e4, output=lengths, router=router))
    serving, requests = result.serving, records.serving.requests
    assert (serving.arrived, serving.completed, serving.running, serving.waiting) == (60, 60, 0, 0)
    assert records.serving.itl_s.size == int((requests.output_tokens - 1).sum())
    single = requests.output_tokens == 1
    assert np.isnan(requests.kv_transfer_s[single]).all()  # done in the prefill pool
    assert np.isfinite(requests.kv_transfer_s[~single]).all()
    assert np.all(requests.first_token_s >= requests.arrival_s)
    assert np.all(requests.finish_s >= requests.first_token_s)
    assert len(result.memory.peak_bytes_per_device) == 6  # 2 prefill + 4 decode GPUs
    decode_steps = records.serving.decode_tokens.sum() + records.serving.prefill_tokens.sum()
    # every prompt prefilled once (no preemption here) and every later token decoded once
    assert serving.preemptions == 0
    assert decode_steps == requests.prompt_tokens.sum() + (requests.output_tokens - 1).sum()
    # each row is one pool's step; the caches are apart, so their peaks add up
    pool, kv = records.serving.pool, records.serving.kv_blocks
    assert set(pool.tolist()) == {"prefill", "decode"}
    assert records.serving.prefill_tokens[pool == "decode"].sum() == 0  # nothing recomputed
    peaks = kv[pool == "prefill"].max() + kv[pool == "decode"].max()
    assert serving.kv_cache.peak_blocks == peaks
    assert result.per_step["pool"] == pool.tolist()


def test_one_pool_of_role_both_is_colocated_serving() -> None:
    plain = {"nodes": 1, "gpus_per_node": 2, "device": SIMPLE_PROFILE}
    both = {**plain, "pools": [{"role": "both", "nodes": 1}]}
    a, _ = run(_serving(plain, count=20, rate=2e4))
    b, _ = run(_serving(both, count=20, rate=2e4))
    assert a.serving == b.serving
    assert a.latency_s == b.latency_s


def test_a_decode_group_takes_a_request_only_when_its_blocks_are_free(monkeypatch) -> None:
    from moesim.sim import serving_groups

    full_cache = serving_groups.kv_cache

    def one_request_cache(scenario, plan, requests):
        full = full_cache(scenario, plan, requests)
        blocks = -(-(PROMPT + OUTPUT) // 16)  # a request's peak, in blocks of 16 tokens
        return serving_groups.KVCache(
            full.weights_G, np.full_like(full.blocks_A, blocks), full.activation_G
        )

    monkeypatch.setattr("moesim.sim.serving_pool.kv_cache", one_request_cache)
    _, records = run(_serving(_pools(gpus_per_node=1), count=3))
    requests = records.serving.requests
    order = np.argsort(requests.first_token_s)
    # each lands only after the one before it finished and freed its blocks
    assert np.all(requests.first_token_s[order[1:]] > requests.finish_s[order[:-1]])


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        (
            {"gpus_per_node": 1, "device": SIMPLE_PROFILE, "pools": [{"role": "prefill"}]},
            "give one pool of role both, or one prefill and one decode pool",
        ),
        (
            {**_pools(gpus_per_node=1), "nodes": 3},
            "the pools hold 2 GPUs, the cluster 3",
        ),
        (
            {**_pools(gpus_per_node=1), "parallel": {"attention_tp": 2, "expert_tp": 1}},
            "give each pool its own parallel layout",
        ),
        (
            _pools(gpus_per_node=1, decode={"parallel": {"attention_tp": 2, "expert_tp": 1}}),
            "pools (decode): parallel.attention_tp (2) does not divide the cluster's 1 GPUs",
        ),
    ],
    ids=["roles", "partition", "top-level-parallel", "pool-layout"],
)
def test_a_cluster_of_pools_that_cannot_be_is_refused_in_one_line(cluster, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _serving(cluster)


def test_pools_refuse_a_fixed_batch_and_the_static_scheduler(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="pools serve requests"):
        make_scenario(
            model=dict(TINY_MODEL),
            cluster=_pools(gpus_per_node=1),
            workload=workload(phase="decode", batch_size=2, seq_len=8, steps=1),
        )
    static = _serving(_pools(gpus_per_node=1), scheduler={"name": "static", "batch_size": 2})
    path = tmp_path / "static.yaml"
    path.write_text(static.model_dump_json())
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "policies.scheduler" in err[0] and "continuous or chunked" in err[0]


def test_the_reference_executor_refuses_pools_and_load_aware_routing() -> None:
    from moesim.reference.workplan import UnsupportedScenarioError, check_layout

    with pytest.raises(UnsupportedScenarioError, match=r"cluster\.pools"):
        check_layout(_serving(_pools(gpus_per_node=1)))
    plain = {"nodes": 1, "gpus_per_node": 2, "device": SIMPLE_PROFILE}
    with pytest.raises(UnsupportedScenarioError, match=r"policies\.router"):
        check_layout(_serving(plain, router="least_loaded"))


def test_each_pools_steps_are_traced_on_its_own_gpus() -> None:
    from moesim.sim.serving import simulate_serving

    cluster = _pools(gpus_per_node=2, decode={"nodes": 2})  # GPUs 0-1 prefill, 2-5 decode
    records = simulate_serving(_serving(cluster, count=4), trace_steps=50)
    spans = records.spans
    prefill = spans.device < 2
    assert set(spans.device.tolist()) == set(range(6))
    assert all("0 decode tokens" in name for name in spans.name[prefill])
    assert all(name.startswith("step: 0 prefill") for name in spans.name[~prefill])


def test_under_load_every_kv_lands_after_its_prompt_and_its_transfer() -> None:
    device = {**SIMPLE_PROFILE, "compute": {**SIMPLE_PROFILE["compute"], "launch_overhead": 2e-6}}
    lengths = {"distribution": "uniform", "low": 2, "high": 40}
    scheduler = {"name": "continuous", "max_sequences": 2}  # decode groups fill: prompts queue
    cluster = {**_pools(gpus_per_node=1), "device": device}
    _, records = run(_serving(cluster, count=300, rate=1e3, output=lengths, scheduler=scheduler))
    requests = records.serving.requests
    sent = np.isfinite(requests.kv_transfer_s)
    # layer by layer, at best all but the last layer's compute hides: 2 b - a after the step
    assert np.all(
        requests.kv_transfer_s[sent]
        >= _transfer(NETWORK) - fixed_latency("prefill", PROMPT, device) / 2
    )
    assert np.all(requests.kv_transfer_s[sent] > 0)
    assert np.all(
        requests.first_token_s[sent] - requests.kv_transfer_s[sent] >= requests.arrival_s[sent]
    )


def test_a_pool_inside_a_rack_wide_nvlink_domain_keeps_it() -> None:
    cluster = make_scenario(
        cluster={**_pools(gpus_per_node=4, decode={"nodes": 3}), "nvlink_domain": 16},
        workload={
            "phase": "serving",
            "requests": {
                "count": 1,
                "arrival": {"process": "offline"},
                "prompt_tokens": {"distribution": "fixed", "value": 8},
                "output_tokens": {"distribution": "fixed", "value": 2},
            },
            "routing": {"source": "synthetic"},
        },
    ).clusters()
    assert [(c.gpus, c.domain) for c in cluster] == [(4, 4), (12, 12)]
