"""Calibration: the fits on hand-made data, and a quick CPU calibration read back as a profile."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moesim.calibrate import calibrate_profile, write_profile  # noqa: E402
from moesim.calibrate.fit import fit_latency_bandwidth, peak_flops  # noqa: E402
from moesim.config import HardwareProfile, load_hardware_profile  # noqa: E402
from moesim.errors import MoesimError  # noqa: E402

QUICK_M, QUICK_K, QUICK_N = [1, 4, 16, 64], [32, 64], [32, 64]
KIB = 1024


# --- fits -----------------------------------------------------------------------------------


def test_fit_recovers_latency_and_bandwidth_of_an_exact_curve():
    sizes = [4 * KIB * 4**i for i in range(8)]
    seconds = [10e-6 + size / 1e9 for size in sizes]
    latency, bandwidth = fit_latency_bandwidth(sizes, seconds)
    assert latency == pytest.approx(10e-6, rel=1e-9)
    assert bandwidth == pytest.approx(1e9, rel=1e-9)


def test_fit_clamps_a_negative_latency_and_refits_through_the_origin():
    sizes = np.array([1e6, 2e6, 4e6, 8e6])
    seconds = sizes / 1e9 - 1e-4  # a line through (0, -100 us)
    latency, bandwidth = fit_latency_bandwidth(sizes, seconds)
    # minimising sum(((x * s) - y) / y)^2 over the slope s alone
    slope = np.sum(sizes / seconds) / np.sum((sizes / seconds) ** 2)
    assert latency == 0.0
    assert bandwidth == pytest.approx(1 / slope, rel=1e-9)


def test_fit_of_a_flat_curve_is_its_latency_and_best_rate():
    latency, bandwidth = fit_latency_bandwidth([1e3, 1e4], [2e-5, 2e-5])
    assert latency == 2e-5
    assert bandwidth == pytest.approx(1e4 / 2e-5)


def test_peak_is_the_best_rate_of_the_table_not_its_largest_cell():
    table = {
        "m": [1, 2],
        "k": [4, 8],
        "n": [16],
        # seconds[i_k][i_n][i_m]
        "seconds": [[[1e-6, 4e-6]], [[8e-6, 8e-6]]],
    }
    # rates 2mkn/t: k=4: 128e6, 64e6; k=8: 32e6, 64e6
    assert peak_flops(table) == pytest.approx(128e6)


# --- a quick CPU calibration ----------------------------------------------------------------


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    threads_before = torch.get_num_threads()
    progress: list[tuple[str, int, int]] = []
    profile = calibrate_profile(
        "cpu", grid="quick", world_sizes=[2], on_progress=lambda *call: progress.append(call)
    )
    return {"profile": profile, "progress": progress, "threads_before": threads_before}


def _provenances(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node["provenance"]] if "provenance" in node else []
        return found + [p for value in node.values() for p in _provenances(value)]
    return []


def test_quick_profile_is_written_and_loads_back(quick, tmp_path: Path):
    path = tmp_path / "local-cpu.yaml"
    write_profile(quick["profile"], path)
    loaded = load_hardware_profile(path)
    assert loaded == HardwareProfile.model_validate(quick["profile"])
    header = path.read_text(encoding="utf-8").splitlines()[:4]
    assert header[1] == f"# device: {loaded.compute.provenance.measured_on}"
    assert header[2] == f"# date: {datetime.date.today().isoformat()}"
    assert header[3] == "# command: moesim calibrate --device cpu --grid quick --world-sizes 2"


def test_quick_gemm_table_has_the_quick_grid_and_positive_times(quick):
    gemm = quick["profile"]["compute"]["gemm"]
    assert (gemm["dtype"], gemm["m"], gemm["k"], gemm["n"]) == ("fp32", QUICK_M, QUICK_K, QUICK_N)
    seconds = np.asarray(gemm["seconds"])
    assert seconds.shape == (len(QUICK_K), len(QUICK_N), len(QUICK_M))
    assert (seconds > 0).all()


def test_quick_peak_is_the_best_rate_over_its_table(quick):
    gemm = quick["profile"]["compute"]["gemm"]
    rates = [
        2 * m * k * n / gemm["seconds"][i_k][i_n][i_m]
        for i_k, k in enumerate(gemm["k"])
        for i_n, n in enumerate(gemm["n"])
        for i_m, m in enumerate(gemm["m"])
    ]
    assert quick["profile"]["compute"]["peak_flops"] == {"fp32": pytest.approx(max(rates), 1e-3)}


def test_quick_curves_have_their_sizes_and_fitted_figures(quick):
    links = quick["profile"]["links"]
    alltoall = links["nvlink"]["alltoall"]
    assert list(alltoall) == [2]
    # two ranks: all bytes go to the one peer, 1 KiB to 256 KiB in powers of 4
    assert alltoall[2]["bytes"] == [KIB * 4**i for i in range(5)]
    assert all(s > 0 for s in alltoall[2]["seconds"])
    transfer = links["host"]["transfer"]
    assert transfer["bytes"] == [4 * KIB * 4**i for i in range(5)]
    latency, bandwidth = fit_latency_bandwidth(transfer["bytes"], transfer["seconds"])
    assert bandwidth > 0
    assert links["host"]["bandwidth"] == pytest.approx(bandwidth, rel=1e-3)
    assert links["host"]["latency"] == pytest.approx(latency, rel=1e-3, abs=1e-12)
    assert links["host"]["pinned"] is False


def test_quick_profile_describes_this_machine(quick):
    profile = quick["profile"]
    assert profile["name"] == "local-cpu"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert profile["memory"]["capacity"] == profile["host"]["memory"] == ram
    assert profile["memory"]["bandwidth"] > 0 and profile["compute"]["launch_overhead"] > 0
    provenances = _provenances(profile)
    assert len(provenances) == 5  # compute, memory, host link, all-to-all link, host
    for provenance in provenances:
        assert provenance["source"] == "calibrated"
        assert provenance["date"] == datetime.date.today().isoformat()
        assert provenance["ref"].startswith("moesim calibrate --device cpu")
        assert provenance["software"]["torch"] == str(torch.__version__)


def test_quick_calibration_reports_progress_and_restores_threads(quick):
    progress = quick["progress"]
    cells = len(QUICK_M) * len(QUICK_K) * len(QUICK_N)
    assert [call for call in progress if call[0] == "gemm"] == [
        ("gemm", done, cells) for done in range(1, cells + 1)
    ]
    # sizes, bandwidth, launch, attention decode and prefill
    copies = len([4 * KIB * 4**i for i in range(5)]) + 4
    assert [call for call in progress if call[0] == "copies"][-1] == ("copies", copies, copies)
    assert progress[-1] == ("alltoall", 1, 1)
    assert torch.get_num_threads() == quick["threads_before"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, options, message",
    [
        ("tpu", {}, "unknown device 'tpu'"),
        ("cpu:1", {}, "unknown device"),
        ("cpu", {"world_sizes": [1]}, "needs 2 ranks"),
        ("cpu", {"world_sizes": [9]}, "larger than 8 CPU processes"),
        ("cpu", {"dtype": "fp8"}, "cannot calibrate dtype 'fp8'"),
        ("cpu", {"grid": "huge"}, "unknown grid"),
    ],
)
def test_bad_input_is_one_clear_error(device, options, message):
    with pytest.raises(MoesimError, match=message) as caught:
        calibrate_profile(device, **options)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_an_error():
    with pytest.raises(MoesimError, match="no CUDA GPU"):
        calibrate_profile("cuda:0", grid="quick")


def test_an_invalid_profile_is_not_written_over_an_existing_file(quick, tmp_path: Path):
    path = tmp_path / "profile.yaml"
    path.write_text("kept\n", encoding="utf-8")
    broken = {**quick["profile"], "name": ""}
    with pytest.raises(MoesimError, match="name"):
        write_profile(broken, path)
    assert path.read_text(encoding="utf-8") == "kept\n"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_gpu_calibration_loads(tmp_path: Path):
    profile = calibrate_profile("cuda:0", grid="quick", world_sizes=[])
    path = tmp_path / "gpu.yaml"
    write_profile(profile, path)
    loaded = load_hardware_profile(path)
    assert loaded.links.host.pinned is True and loaded.links.nvlink is None
    assert loaded.compute.gemm is not None and loaded.compute.gemm.dtype == "fp16"
    assert loaded.memory.capacity == torch.cuda.get_device_properties(0).total_memory


def test_monotone_pools_a_dip_with_its_neighbours_by_hand():
    from moesim.calibrate.fit import monotone

    # 698, 190, 192 violate the order: they pool to their mean, 360
    assert monotone([261, 698, 190, 192, 579]) == [261, 360, 360, 360, 579]
    assert monotone([3, 2, 1]) == [2, 2, 2]
    assert monotone([1, 2, 2, 5]) == [1, 2, 2, 5]
