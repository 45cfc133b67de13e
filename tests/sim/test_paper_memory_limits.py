"""The seed paper's batch limits on 8 V100 32 GB (Huang et al. §III-A, §V-B): static gating's
S x E x C dispatch tensors cap the LM at 8 sentences per GPU and the MT encoder at 48; dynamic
gating lets the LM reach 64 per GPU."""

from pathlib import Path

import pytest

from moesim.api import load_scenario, run

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.mark.parametrize(
    ("scenario", "gating", "fits", "too_many"),
    [
        ("paper-lm.yaml", None, 8, 16),
        ("paper-lm.yaml", "dynamic", 64, 128),
        ("paper-mt-encoder.yaml", None, 48, 96),
    ],
)
def test_largest_batch_that_fits_one_node(scenario, gating, fits, too_many) -> None:
    def out_of_memory(per_gpu: int) -> bool:
        overrides = [f"workload.batch_size={8 * per_gpu}", "workload.steps=1"]
        if gating:
            overrides.append(f"policies.gating={gating}")
        result, _ = run(load_scenario(SCENARIOS / scenario, overrides))
        return result.memory.out_of_memory

    assert not out_of_memory(fits)
    assert out_of_memory(too_many)


def test_dynamic_gating_shrinks_the_lm_activation_peak() -> None:
    static, _ = run(load_scenario(SCENARIOS / "paper-lm.yaml", ["workload.steps=1"]))
    dynamic, _ = run(
        load_scenario(SCENARIOS / "paper-lm.yaml", ["workload.steps=1", "policies.gating=dynamic"])
    )
    # the paper: 6.29 GB -> 1.28 GB of activations at batch 8 (-79.6 %)
    s = max(static.memory.activation_peak_bytes_per_device)
    d = max(dynamic.memory.activation_peak_bytes_per_device)
    assert d < 0.3 * s
    assert max(dynamic.memory.weights_bytes_per_device) == max(
        static.memory.weights_bytes_per_device
    )
