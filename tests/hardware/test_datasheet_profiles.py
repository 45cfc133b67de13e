"""The shipped hardware profiles: each loads through the real loader, every figure group names
its source, and the datasheet profiles carry the datasheets' figures (written down here from
the documents their provenance names, per GPU, dense, bandwidths per direction).

End to end, one memory-bound decode step (a 4-layer Mixtral-shaped MoE, 8 sequences, one GPU)
runs on each datasheet profile, and the step's latency must follow the HBM bandwidths: with the
same launch overhead and memory efficiency everywhere, ``t = fixed + bytes / bandwidth``, so a
device with less bandwidth is slower by at most the bandwidth ratio, and the bytes implied by
any two devices' latencies are the same and lie between the weights the step must read.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from moesim.api import run
from moesim.config import shipped_names
from moesim.config.loading import find_file, load_hardware_profile, read_yaml
from tests.conftest import ROOT, make_scenario, workload

PROFILES = ROOT / "hardware_profiles"
GB, TB, TFLOPS, GBIT = 1e9, 1e12, 1e12, 1e9 / 8

# name: (bf16 TFLOPS, fp8 TFLOPS, HBM bytes, HBM bytes/s, GPU-GPU bytes/s per direction,
#        network bytes/s per GPU), all dense peaks, from the datasheets the profiles cite.
DATASHEET = {
    # NVIDIA H200 datasheet: BF16 1,979 / FP8 3,958 sparse; 141 GB at 4.8 TB/s; NVLink 900 GB/s
    # bidirectional; DGX H200: 8x ConnectX-7 400 Gb/s.
    "h200-sxm-141gb": (989, 1979, 141 * GB, 4.8 * TB, 450 * GB, 400 * GBIT),
    # NVIDIA H800 datasheet: H100 tensor cores and HBM3; NVLink 400 GB/s bidirectional; one
    # 400 Gb/s ConnectX-7 per GPU in DeepSeek's nodes.
    "h800-sxm5-80gb": (989, 1979, 80 * GB, 3.35 * TB, 200 * GB, 400 * GBIT),
    # NVIDIA HGX H20 specification: BF16 148 / FP8 296 dense; 96 GB at 4.0 TB/s; NVLink 900 GB/s.
    "h20-96gb": (148, 296, 96 * GB, 4.0 * TB, 450 * GB, 400 * GBIT),
    # DGX B200: FP8 72 PF sparse, 1,440 GB at 64 TB/s, NVLink 14.4 TB/s, for 8 GPUs; 8x CX-7.
    "b200-sxm-180gb": (2250, 4500, 180 * GB, 8 * TB, 900 * GB, 400 * GBIT),
    # GB200 NVL72: FP8 720 / BF16 360 PF sparse, 13.4 TB at 576 TB/s, NVLink 130 TB/s, for 72.
    "gb200-nvl72": (2500, 5000, 186 * GB, 8 * TB, 900 * GB, 400 * GBIT),
    # AMD MI300X data sheet: BF16 1,307.4 / FP8 2,614.9 dense; 192 GB at 5.3 TB/s; Infinity
    # Fabric 7 peer links of 128 GB/s bidirectional.
    "mi300x-192gb": (1307.4, 2614.9, 192 * GB, 5.3 * TB, 448 * GB, 400 * GBIT),
    # NVIDIA L40S datasheet: BF16 362.05 / FP8 733 dense; 48 GB at 864 GB/s; PCIe Gen4 x16
    # 64 GB/s bidirectional, no NVLink; one 400 Gb/s NIC per 2 GPUs.
    "l40s-48gb": (362.05, 733, 48 * GB, 864 * GB, 32 * GB, 200 * GBIT),
}
HAS_FP8 = {"h100-sxm5-80gb", *DATASHEET}  # A100 and V100 have no FP8 tensor cores


def _profile(name: str):
    return load_hardware_profile(PROFILES / f"{name}.yaml")


def _sections(profile) -> dict[str, object]:
    links = {f"links.{k}": v for k, v in profile.links if v is not None}
    return {"compute": profile.compute, "memory": profile.memory, "host": profile.host, **links}


@pytest.mark.parametrize("name", shipped_names("device"))
def test_every_shipped_profile_loads_and_names_its_sources(name: str) -> None:
    path = find_file("device", name, None)
    assert path is not None and path.stem == name
    profile = load_hardware_profile(path)
    assert profile.name == name
    for where, section in _sections(profile).items():
        assert section.provenance.ref.strip(), f"{name}: {where} has an empty provenance ref"


def test_the_new_profiles_ship_and_are_listed() -> None:
    from moesim.cli_list import listed

    assert set(DATASHEET) <= set(shipped_names("device"))
    assert set(DATASHEET) <= set(listed("profiles"))


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_datasheet_figures(name: str) -> None:
    bf16, fp8, capacity, hbm, gpu_link, network = DATASHEET[name]
    profile = _profile(name)
    flops = profile.compute.peak_flops
    assert flops["bf16"] == pytest.approx(bf16 * TFLOPS)
    assert flops["fp16"] == flops["bf16"]
    assert flops["fp8"] == pytest.approx(fp8 * TFLOPS)
    assert profile.memory.capacity == pytest.approx(capacity)
    assert profile.memory.bandwidth == pytest.approx(hbm)
    assert profile.links.nvlink is not None and profile.links.network is not None
    assert profile.links.nvlink.bandwidth == pytest.approx(gpu_link)
    port = profile.links.network
    assert port.bandwidth / port.shared_by == pytest.approx(network)
    for where in ("compute", "memory", "links.nvlink", "links.host", "links.network"):
        assert _sections(profile)[where].provenance.source in ("datasheet", "assumption")


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_assumptions_are_marked(name: str) -> None:
    """Efficiencies and latencies are not on any datasheet: every figure group that has one says
    so, or is marked an assumption as a whole."""
    for where, section in _sections(_profile(name)).items():
        if where == "host":
            continue
        provenance = section.provenance
        assert provenance.source == "assumption" or "assumption" in provenance.ref, where


def test_fp8_where_the_hardware_has_it() -> None:
    for name in shipped_names("device"):
        flops = _profile(name).compute.peak_flops
        assert ("fp8" in flops) == (name in HAS_FP8), name
    # Dense FP8 is twice dense BF16 on every GPU that has both (the L40S datasheet gives FP8
    # 733 beside BF16 362.05: 1.2 % off, as printed).
    for name in HAS_FP8:
        flops = _profile(name).compute.peak_flops
        assert flops["fp8"] == pytest.approx(2 * flops["bf16"], rel=0.015), name


def test_gb200_notes_its_nvlink_domain_in_the_header() -> None:
    text = (PROFILES / "gb200-nvl72.yaml").read_text()
    header = text.split("\nname:")[0]
    assert "nvlink_domain: 72" in header
    assert "nvlink_domain" not in read_yaml(PROFILES / "gb200-nvl72.yaml")


# ---- end to end: a memory-bound decode step on each device ------------------------------------

MODEL_CARD = ROOT / "scenarios" / "models" / "mixtral-8x7b.yaml"
LAYERS, BATCH, CONTEXT = 4, 8, 512
COMPARED = ["h100-sxm5-80gb", *sorted(DATASHEET)]


def _weights_bytes(model: dict, experts_read: int) -> float:
    """bf16 bytes of the weights a decode step reads with ``experts_read`` experts per layer."""
    d, kv = model["d_model"], model["kv_heads"] * model["head_dim"]
    attention = d * (2 * d + 2 * kv)  # q, o and k, v projections
    expert = 3 * d * model["d_ffn"]  # SwiGLU: gate, up, down
    return 2.0 * (LAYERS * (attention + experts_read * expert) + d * model["vocab_size"])


@pytest.fixture(scope="module")
def decode_latency_s() -> dict[str, float]:
    model = {**read_yaml(MODEL_CARD), "layers": LAYERS}
    latency = {}
    for name in COMPARED:
        scenario = make_scenario(
            model=model,
            cluster={
                "nodes": 1,
                "gpus_per_node": 1,
                "device": read_yaml(PROFILES / f"{name}.yaml"),
            },
            workload=workload(batch_size=BATCH, seq_len=CONTEXT),
        )
        result, _ = run(scenario)
        latency[name] = result.latency_s.mean
    return latency


def test_decode_step_follows_memory_bandwidth(decode_latency_s: dict[str, float]) -> None:
    profiles = {name: _profile(name) for name in COMPARED}
    for profile in profiles.values():  # what makes the bandwidth bound exact
        assert profile.compute.launch_overhead == profiles["h100-sxm5-80gb"].compute.launch_overhead
        assert profile.memory.efficiency == profiles["h100-sxm5-80gb"].memory.efficiency
    bandwidth = {name: profile.memory.bandwidth for name, profile in profiles.items()}
    for slow, fast in itertools.permutations(COMPARED, 2):
        if bandwidth[slow] >= bandwidth[fast]:
            continue
        ratio = decode_latency_s[slow] / decode_latency_s[fast]
        assert 1.0 < ratio <= bandwidth[fast] / bandwidth[slow] * (1 + 1e-9), (slow, fast)
    # The datasheets' order, spelled out: L40S slowest, then the H100 and H800 (the same HBM3),
    # the H20, the H200, the MI300X, and the two Blackwells (the same 8 TB/s) fastest.
    t = decode_latency_s
    assert t["l40s-48gb"] > t["h100-sxm5-80gb"] > t["h20-96gb"] > t["h200-sxm-141gb"]
    assert t["h200-sxm-141gb"] > t["mi300x-192gb"] > t["b200-sxm-180gb"]
    assert t["h800-sxm5-80gb"] == pytest.approx(t["h100-sxm5-80gb"], rel=1e-12)
    assert t["gb200-nvl72"] == pytest.approx(t["b200-sxm-180gb"], rel=1e-12)


def test_decode_step_bytes_implied_by_latencies(decode_latency_s: dict[str, float]) -> None:
    """Two devices' latencies give the bytes the step moves, ``(t_a - t_b) / (1/bw_a - 1/bw_b)``
    with effective bandwidths; every pair must give the same bytes (nothing but memory differs),
    and those bytes lie between the weights with 2 and with all 8 experts read per layer."""
    model = read_yaml(MODEL_CARD)
    effective = {
        name: (p := _profile(name)).memory.bandwidth * p.memory.efficiency for name in COMPARED
    }
    implied = [
        (decode_latency_s[a] - decode_latency_s[b]) / (1 / effective[a] - 1 / effective[b])
        for a, b in itertools.combinations(COMPARED, 2)
        if effective[a] != effective[b]
    ]
    assert max(implied) == pytest.approx(min(implied), rel=1e-6)
    kv_cache = 2.0 * LAYERS * BATCH * CONTEXT * 2 * model["kv_heads"] * model["head_dim"]
    low = _weights_bytes(model, model["top_k"])
    high = 1.1 * (_weights_bytes(model, model["num_experts"]) + kv_cache)
    assert low < implied[0] < high


def test_profiles_folder_holds_only_yaml() -> None:
    assert all(path.suffix == ".yaml" for path in Path(PROFILES).iterdir() if path.is_file())
