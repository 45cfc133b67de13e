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
