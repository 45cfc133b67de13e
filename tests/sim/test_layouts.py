"""Parallel layouts by hand: tensor-parallel all-reduces, expert ranks, memory per GPU, NVLink
domains, per-part precision, and the layouts a model or cluster cannot take."""

import copy

import numpy as np
import pytest
from pydantic import ValidationError

from moesim.api import run
from moesim.config import PoliciesSpec, load_model_card
from moesim.hardware import DeviceCosts
from moesim.sim.layer_costs import attention_time, core_width
from tests.conftest import SCENARIOS, SIMPLE_PROFILE, TINY_MODEL, make_scenario, workload

# 2 MoE layers, 2 heads of 2 (q_dim 4, K and V 8 wide), fp32: every byte countable by hand
MODEL = {**TINY_MODEL, "moe_every": 1, "heads": 2}
NVLINK_LATENCY, NVLINK_BW = 1e-6, 1e9  # SIMPLE_PROFILE's


def _scenario(gpus=2, attention_tp=1, expert_tp=1, model=MODEL, nodes=1, **cluster):
    return make_scenario(
        model=model,
        cluster={
            "nodes": nodes,
            "gpus_per_node": gpus,
            "device": copy.deepcopy(SIMPLE_PROFILE),
            "parallel": {"attention_tp": attention_tp, "expert_tp": expert_tp},
            **cluster,
        },
        workload=workload(batch_size=4),
    )


def _policies(raw):
    return PoliciesSpec.model_validate(raw)


def _switched_allreduce(rows: int, ranks: int) -> float:
    """Reduce-scatter + all-gather through a switch: two latencies, 2 (n-1)/n of the bytes."""
    return 2 * NVLINK_LATENCY + rows * 4 * 4 * 2 * (ranks - 1) / ranks / NVLINK_BW


def test_attention_tp_all_reduces_each_block_over_the_group() -> None:
    result, _ = run(_scenario(attention_tp=2))
    # one all-reduce per attention block, of the group's 4 rows of d_model 4 in fp32
    assert result.time_breakdown_s["allreduce"] == pytest.approx(2 * _switched_allreduce(4, 2))
    assert result.time_breakdown_s["alltoall"] > 0  # experts stay expert-parallel


def test_expert_tp_is_expert_parallelism_over_ranks_with_narrower_ffns() -> None:
    """4 GPUs in 2 ranks of 2 route, gate and compute experts as 2 GPUs whose FFNs are half
    as wide; each MoE layer adds the rank's all-gather and reduce-scatter of its 2 rows."""
    split, _ = run(_scenario(gpus=4, expert_tp=2))
    narrow, _ = run(_scenario(gpus=2, model={**MODEL, "d_ffn": MODEL["d_ffn"] // 2}))
    for phase in ("gate", "alltoall", "expert"):
        assert split.time_breakdown_s[phase] == pytest.approx(narrow.time_breakdown_s[phase])
    # each of a rank's 2 GPUs sends the rank's rows through its own port
    assert split.alltoall_bytes == 2 * narrow.alltoall_bytes
    # each GPU computes half of its rank's rows: the shares add up to the rows routed
    assert sum(map(sum, split.placement.gpu_tokens_by_layer)) == pytest.approx(
        sum(map(sum, narrow.placement.gpu_tokens_by_layer))
    )
    assert split.time_breakdown_s["allreduce"] == pytest.approx(2 * _switched_allreduce(2, 2))


def test_full_tensor_parallelism_has_no_all_to_all() -> None:
    result, _ = run(_scenario(gpus=2, attention_tp=2, expert_tp=2))
    assert result.alltoall_bytes == 0 and result.time_breakdown_s["alltoall"] == 0
    # the attention block's all-reduce and the experts' per MoE layer, 4 rows each
    assert result.time_breakdown_s["allreduce"] == pytest.approx(4 * _switched_allreduce(4, 2))


def test_weights_and_kv_per_gpu_by_hand() -> None:
    _, records = run(_scenario(attention_tp=2))
    # embedding 10x4 and 2 attention blocks of 4x4 + 4x8 + 4x4 split in two; routers 2 x 4x4
    # whole; 2 of the 4 experts (2 x 4 x 8) in each of 2 layers; fp32
    params = (40 + 2 * 64) / 2 + 32 + 2 * 2 * 64
    assert records.devices.weights_bytes.tolist() == [params * 4] * 2
    # the group's 4 sequences split by KV head: 2 x 1 position x 8 wide x 4 B x 2 layers
    assert records.devices.kv_cache_bytes.tolist() == [2 * 8 * 4 * 2] * 2


def test_mla_latent_cache_replicates_across_tensor_parallel_ranks() -> None:
    mla = {"q_lora_rank": 4, "kv_lora_rank": 6, "rope_dim": 2, "nope_dim": 2, "v_dim": 2}
    model = {**MODEL, "mla": mla}
    _, dp = run(_scenario(model=model))
    _, tp = run(_scenario(model=model, attention_tp=2))
    # 4x4 + 4x8 down-projections whole on each GPU, the 32 + 48 + 16 per-head ones halved
    assert _scenario(model=model).model.attention_params_per_gpu(2) == 48 + 96 / 2
    # each GPU of the group caches all 4 sequences' latents (6 + 2 wide): twice DP's 2
    assert tp.devices.kv_cache_bytes.tolist() == [4 * 8 * 4 * 2] * 2
    assert dp.devices.kv_cache_bytes.tolist() == [2 * 8 * 4 * 2] * 2


def test_deepseek_v3_mla_shapes_from_its_card() -> None:
    card = load_model_card(SCENARIOS / "models" / "deepseek-v3.yaml")
    # DeepSeek-V3 config.json: q_lora 1536, kv_lora 512, rope 64, nope 128, v 128, 128 heads
    assert card.attention_params_per_block == 187_105_280
    assert card.kv_width == 576 and card.kv_splits == 1
    assert round(card.total_params / 1e9) == 671
    assert core_width(card, decode=True) == 128 * (576 + 512)  # absorbed: in the latent
    assert core_width(card, decode=False) == 128 * (192 + 128)
    parts = {p: card.part_dtype(p) for p in ("attention", "kv_cache", "dispatch", "combine")}
    assert card.dtype == "fp8"
    assert parts == {"attention": "bf16", "kv_cache": "bf16", "dispatch": "fp8", "combine": "bf16"}


def test_dispatch_and_combine_move_rows_in_their_own_precision() -> None:
    static = {"gating": {"name": "static", "capacity_factor": 1.0}}  # no count exchange
    base = run(_scenario().model_copy(update={"policies": _policies(static)}))[0]
    model = {**MODEL, "dispatch_dtype": "fp8", "combine_dtype": "fp16"}
    mixed = run(_scenario(model=model).model_copy(update={"policies": _policies(static)}))[0]
    # the same padded rows: 4 B + 4 B per element before, 1 B + 2 B after
    assert mixed.alltoall_bytes == pytest.approx(base.alltoall_bytes * 3 / 8)


def test_an_nvlink_domain_of_two_nodes_keeps_traffic_off_the_network() -> None:
    per_node, _ = run(_scenario(gpus=2, nodes=2))
    rack, _ = run(_scenario(gpus=2, nodes=2, nvlink_domain=4))
    assert per_node.alltoall_bytes_by_kind["network"] > 0
    assert rack.alltoall_bytes_by_kind["network"] == 0
    assert rack.alltoall_bytes_by_kind["nvlink"] == pytest.approx(per_node.alltoall_bytes)
    assert rack.latency_s.mean < per_node.latency_s.mean


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention_tp": 3}, "does not divide the cluster's 2 GPUs"),
        ({"gpus": 4, "attention_tp": 4}, "does not divide the 2 attention heads"),
        ({"expert_tp": 2, "model": {**MODEL, "d_ffn": 7}}, r"does not divide tiny's d_ffn \(7\)"),
        ({"nvlink_domain": 4}, "more than the cluster's 2"),
        ({"gpus": 2, "nodes": 3, "nvlink_domain": 4}, "whole number of nodes"),
        (
            {
                "gpus": 4,
                "nodes": 3,
                "attention_tp": 6,
                "model": {**MODEL, "heads": 12, "head_dim": 2},
            },
            "straddle NVLink domains",
        ),
    ],
)
def test_a_layout_the_model_or_cluster_cannot_take_is_refused(changes, message) -> None:
    with pytest.raises(ValidationError, match=message):
        _scenario(**changes)


def test_a_grouped_expert_kernel_launches_once_per_gpu_and_layer() -> None:
    device = copy.deepcopy(SIMPLE_PROFILE)
    device["compute"]["launch_overhead"] = 1e-3  # launches dominate: FLOPs are negligible
    phases = {}
    for kernel in ("loop", "grouped"):
        scenario = make_scenario(
            model=MODEL,
            cluster={"nodes": 1, "gpus_per_node": 2, "device": device},
            workload=workload(batch_size=64, routing={"source": "synthetic", "skew": 0.0}),
            policies={"gating": {"name": "dynamic"}, "expert_kernel": kernel},
        )
        phases[kernel] = run(scenario)[0].time_breakdown_s["expert"]
    # 2 MoE layers, 2 experts per GPU (all get rows), 3 launches per FFN (up, down, activation)
    assert phases["loop"] == pytest.approx(2 * 2 * 3e-3, rel=1e-5)
    assert phases["grouped"] == pytest.approx(2 * 3e-3, rel=1e-5)


def test_multi_token_prediction_verifies_drafts_and_emits_the_accepted_ones() -> None:
    plain = run(_scenario())[0]
    mtp = make_scenario(
        model=MODEL,
        cluster={"nodes": 1, "gpus_per_node": 2, "device": copy.deepcopy(SIMPLE_PROFILE)},
        workload=workload(batch_size=4, mtp={"tokens": 2, "acceptance": 0.5}),
    )
    assert mtp.workload.tokens_per_step == 4 * 3  # each sequence's next token and 2 drafts
    result, records = run(mtp)
    assert result.tokens.routed == 2 * 12 * 1  # 2 MoE layers, top-1
    # the drafts share their sequence's cache: the KV memory of 4 sequences, as without MTP
    plain_kv = run(_scenario())[1].devices.kv_cache_bytes
    np.testing.assert_array_equal(records.devices.kv_cache_bytes, plain_kv)
    # 1 + 0.5 + 0.25 tokens per sequence per step on average
    step = result.latency_s.mean
    assert result.output_tokens_per_s == pytest.approx(4 * 1.75 / step)
    assert plain.output_tokens_per_s == pytest.approx(4 / plain.latency_s.mean)
    with pytest.raises(ValidationError, match="applies to phase decode, not prefill"):
        make_scenario(workload=workload(phase="prefill", mtp={"tokens": 1}))


def test_attention_under_tp_does_its_share_of_the_flops() -> None:
    scenario = _scenario()
    model = scenario.model
    costs = DeviceCosts.from_profile(scenario.cluster.device, model.dtype)  # 1e12 FLOP/s fp32
    tokens, context = np.array([8.0]), 6.0
    # projections 2 x 8 x 64 and the core 2 x 8 x 6 x (4 + 4), halved across 2 GPUs; memory
    # is free on the simple profile, so FLOPs set the time
    expected = (2 * 8 * 64 + 2 * 8 * 6 * 8) / 2 / 1e12
    assert attention_time(model, costs, tokens, context, True, tp=2)[0] == pytest.approx(expected)
    assert attention_time(model, costs, tokens, context, True)[0] == pytest.approx(2 * expected)
