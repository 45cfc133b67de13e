"""Interpolation of measured tables, checked against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config import GemmTable, MeasuredCurve
from moesim.hardware import DeviceCosts, alltoall_port_time
from moesim.hardware.tables import curve_time, gemm_time
from moesim.sim.layer_costs import ffn_time
from tests.conftest import SIMPLE_PROFILE, make_scenario

M, K, N = [1, 4, 16, 64], [8, 32], [8, 32]


def _cubic_table(rate: float = 1e9) -> GemmTable:
    """t = m k n / rate: log-linear in every axis, so log-space interpolation is exact."""
    seconds = [[[m * k * n / rate for m in M] for n in N] for k in K]
    return GemmTable(dtype="fp32", m=M, k=K, n=N, seconds=seconds)


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(4, 8, 8), (2, 16, 16), (64, 32, 8), (3, 20, 10), (128, 8, 8), (16, 64, 32)],
)
def test_gemm_interpolation_is_exact_on_a_power_law(m, k, n):
    """Inside the grid by interpolation; beyond m linearly; beyond k or n by the FLOPs ratio."""
    assert gemm_time(_cubic_table(), m, k, n) == pytest.approx(m * k * n / 1e9, rel=1e-12)


def test_below_the_grid_a_gemm_costs_the_smallest_measured_one():
    """k = 4 and n = 2 lie below the grid's 8: the time of k = n = 8, not a FLOPs share."""
    assert gemm_time(_cubic_table(), 4, 4, 2) == pytest.approx(4 * 8 * 8 / 1e9, rel=1e-12)
    assert gemm_time(_cubic_table(), 4, 0, 8) == 0.0


def test_zero_rows_cost_nothing_and_rows_broadcast():
    times = gemm_time(_cubic_table(), np.array([0, 1, 4]), 8, 8)
    np.testing.assert_allclose(times, [0.0, 64e-9, 256e-9])


def test_curve_clamps_to_its_latency_below_and_extends_linearly_beyond():
    curve = MeasuredCurve(bytes=[1e3, 1e6], seconds=[1e-5, 1e-3])
    times = curve_time(curve, np.array([0.0, 10.0, 1e3, 1e6, 4e6]))
    np.testing.assert_allclose(times, [0.0, 1e-5, 1e-5, 1e-3, 4e-3])
    # halfway in log bytes is halfway in log seconds: 10**4.5 bytes -> 10**-4 s
    assert curve_time(curve, 10**4.5) == pytest.approx(1e-4)


def test_alltoall_takes_the_largest_measured_world_not_above_the_ranks():
    link_data = {
        **SIMPLE_PROFILE["links"]["nvlink"],
        "alltoall": {
            2: {"bytes": [1.0, 1e6], "seconds": [1e-5, 1e-3]},
            4: {"bytes": [1.0, 1e6], "seconds": [2e-5, 2e-3]},
        },
    }
    profile = make_scenario(
        cluster={
            "nodes": 1,
            "gpus_per_node": 2,
            "device": {**SIMPLE_PROFILE, "links": {**SIMPLE_PROFILE["links"], "nvlink": link_data}},
        }
    ).cluster.device
    link = profile.links.nvlink
    assert alltoall_port_time(link, np.array(1e6), 3) == pytest.approx(1e-3)
    assert alltoall_port_time(link, np.array(1e6), 8) == pytest.approx(2e-3)
    # without a curve: latency + bytes / bandwidth
    plain = make_scenario().cluster.device.links.nvlink
    assert alltoall_port_time(plain, np.array(1e6), 2) == pytest.approx(1e-6 + 1e6 / 1e9)


def test_ffn_with_a_gemm_table_is_its_two_matmuls_plus_the_activation():
    """An MLP FFN of d_model 8, d_ffn 32 over m rows: t(m,8,32) + t(m,32,8) from the table, and
    the activation as a memory-bound op (read and write m x 32 fp32, one launch)."""
    scenario = make_scenario(
        model={**make_scenario().model.model_dump(), "d_model": 8, "d_ffn": 32, "heads": 1}
    )
    costs = DeviceCosts.from_profile(scenario.cluster.device, "fp32")
    costs = DeviceCosts(costs.flops_per_s, 1e9, 1e-6, dtype_bytes=4, gemm=_cubic_table())
    rows = np.array([0, 4, 16])
    expected = 2 * rows * 8 * 32 / 1e9 + (1e-6 + 2 * rows * 32 * 4 / 1e9)
    expected[0] = 0.0
    np.testing.assert_allclose(ffn_time(scenario.model, costs, rows, 32), expected)


def test_a_table_in_another_dtype_is_not_used():
    data = {
        **SIMPLE_PROFILE,
        "compute": {**SIMPLE_PROFILE["compute"], "gemm": _cubic_table().model_dump()},
    }
    profile = make_scenario(cluster={"nodes": 1, "gpus_per_node": 1, "device": data}).cluster.device
    assert DeviceCosts.from_profile(profile, "fp32").gemm is not None
    assert DeviceCosts.from_profile(profile, "fp16").gemm is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"m": [4, 1, 16, 64]}, "m must be strictly ascending"),
        ({"seconds": [[[1e-6] * 4] * 2]}, r"\[k\]\[n\]\[m\] = \[2, 2, 4\]"),
        ({"k": [0, 32]}, "k must be positive"),
    ],
)
def test_malformed_gemm_tables_are_refused(changes, message):
    data = {**_cubic_table().model_dump(), **changes}
    with pytest.raises(ValueError, match=message):
        GemmTable.model_validate(data)


def _measured_costs(**extra):
    return DeviceCosts(1e12, 1e9, 1e-6, dtype_bytes=4, gemm=_cubic_table(), **extra)


def test_measured_dynamic_gate_is_router_gemm_plus_glue_ops_by_hand():
    from moesim.sim.layer_costs import DYNAMIC_GLUE_OPS, gate_time

    model = make_scenario(
        model={
            **make_scenario().model.model_dump(),
            "d_model": 8,
            "num_experts": 8,
            "top_k": 2,
            "heads": 1,
        }
    ).model
    tokens = np.array([4])
    # router (4 x 8) @ (8 x 8); rows = 8 of 32 bytes each: 13 reorders of them, 2 + 3 passes
    # over the tokens, 16 index passes of 8 bytes, 3 passes over the fp32 scores
    moved = 13 * 8 * 32 + 2 * 4 * 32 + 3 * 4 * 32 + 16 * 8 * 8 + 3 * 4 * 8 * 4
    expected = 4 * 8 * 8 / 1e9 + DYNAMIC_GLUE_OPS * 1e-6 + moved / 1e9
    assert gate_time(model, _measured_costs(), tokens, None, False) == pytest.approx(expected)


def test_measured_decode_attention_reads_its_kv_on_the_curve():
    from moesim.config import AttentionCurves
    from moesim.sim.layer_costs import attention_time

    curves = AttentionCurves(
        dtype="fp32",
        head_dim=8,
        decode_kv_bytes=[1.0, 1e9],
        decode_seconds=[1e-9, 1.0],
        prefill_flops=[1.0, 2.0],
        prefill_seconds=[1.0, 2.0],
    )
    model = make_scenario(
        model={**make_scenario().model.model_dump(), "d_model": 8, "heads": 1}
    ).model
    tokens, context = np.array([4]), 16
    # q, k, v of width 8: QKV (4 x 8) @ (8 x 24) and output (4 x 8) @ (8 x 8) on the table;
    # the core reads 4 x 16 x 16 x 4 bytes of K/V at 1 ns per byte; the glue: 3 + 1 launches
    # moving 5 x 4 x 8 x 4 bytes and the new K/V, 4 x 16 x 4
    kv = 4 * context * 16 * 4
    expected = (
        (4 * 8 * 24 + 4 * 8 * 8) / 1e9 + kv * 1e-9 + 4e-6 + (5 * 4 * 8 * 4 + 4 * 16 * 4) / 1e9
    )
    got = attention_time(model, _measured_costs(attention=curves), tokens, context, True)
    assert got == pytest.approx(expected)
