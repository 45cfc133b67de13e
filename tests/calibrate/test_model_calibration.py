"""Per-model calibration: a tiny card timed on a quick grid, read back as a profile; bad
tables named in one line; the cards a validation calibrates."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from moesim.calibrate.device import running_on  # noqa: E402
from moesim.calibrate.model import MODEL_GRIDS, measure_model, model_steps  # noqa: E402
from moesim.calibrate.model_stack import build_stack, step_bytes  # noqa: E402
from moesim.calibrate.writing import write_profile  # noqa: E402
from moesim.config import ModelSpec, load_hardware_profile  # noqa: E402
from moesim.config.model_tables import ModelShapes, ModelTables  # noqa: E402
from moesim.errors import ConfigError, MoesimError  # noqa: E402
from moesim.validate.runner import scenario_models  # noqa: E402
from tests.conftest import ROOT, SMALL_MOE  # noqa: E402

QUICK = MODEL_GRIDS["quick"]
CARD = ModelSpec.model_validate({**SMALL_MOE, "name": "tiny-calibration"})


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    ticks: list[int] = []
    cpu = torch.device("cpu")
    with running_on(cpu):
        stack = build_stack(CARD, cpu, 2**34, scratch_bytes=2**20)
        tables = measure_model(stack, "quick", lambda: ticks.append(1))
    return {"tables": tables, "ticks": len(ticks)}


def test_quick_tables_have_the_quick_grids_and_positive_times(measured):
    tables = measured["tables"]
    assert tables["model"] == "tiny-calibration"
    assert tables["shapes"] == ModelShapes.of(CARD).model_dump()
    assert tables["gate_dynamic"]["tokens"] == [float(t) for t in QUICK["tokens"]]
    assert tables["expert"]["rows"] == [float(r) for r in QUICK["rows"]]
    decode = np.asarray(tables["attention_decode"]["seconds"])
    assert decode.shape == (len(QUICK["context"]), len(QUICK["decode_tokens"]))
    prefill = np.asarray(tables["attention_prefill"]["seconds"])
    assert prefill.shape == (len(QUICK["seq_len"]), len(QUICK["sequences"]))
    assert np.asarray(tables["gate_static"]["seconds"]).shape == (2, len(QUICK["tokens"]))
    assert tables["expert_copy"] > 0
    assert "dense_ffn" not in tables  # every layer of the card is an MoE layer


def test_curves_never_fall_with_more_tokens(measured):
    for name in ("gate_dynamic", "alltoall_dynamic", "ffn", "lm_head", "glue"):
        assert np.all(np.diff(measured["tables"][name]["seconds"]) >= 0), name


def test_progress_counts_every_measurement(measured):
    assert measured["ticks"] == model_steps("quick", dense=False)


def _profile_with(tables: dict[str, Any]) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "hardware_profiles" / "local-cpu.yaml").read_text())
    provenance = {"source": "calibrated", "ref": "moesim calibrate --model tiny-calibration"}
    data["compute"]["models"] = [{**tables, "provenance": provenance}]
    return data


def test_a_profile_with_tables_round_trips_through_yaml(measured, tmp_path: Path):
    path = tmp_path / "profile.yaml"
    profile = _profile_with(measured["tables"])
    write_profile(profile, path)
    loaded = load_hardware_profile(path)
    assert loaded.compute.models == [ModelTables(**profile["compute"]["models"][0])]
    assert loaded.compute.models[0].applies_to(CARD)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda t: t["gate_dynamic"]["seconds"].pop(), "gate_dynamic", "one entry per value"),
        (lambda t: t["expert"]["rows"].reverse(), "expert", "strictly ascending"),
        (
            lambda t: t["attention_decode"]["seconds"][0].append(1.0),
            "attention_decode",
            "[context]",
        ),
        (lambda t: t.pop("lm_head"), "lm_head", "required field is missing"),
    ],
    ids=["length", "order", "grid", "missing"],
)
def test_a_malformed_table_is_one_line_naming_file_and_field(
    measured, tmp_path: Path, change, field, message
):
    tables = copy.deepcopy(measured["tables"])
    change(tables)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_profile_with(tables)))
    with pytest.raises(ConfigError) as error:
        load_hardware_profile(path)
    text = str(error.value)
    assert "\n" not in text
    assert str(path) in text
    assert f"compute.models.0.{field}" in text
    assert message in text


def test_a_card_too_large_for_the_device_is_refused_before_measuring():
    big = CARD.model_copy(update={"d_model": 4096, "d_ffn": 16384, "num_experts": 64})
    with pytest.raises(MoesimError, match="more than a quarter"):
        build_stack(big, torch.device("cpu"), 2**30)


def test_validation_calibrates_each_distinct_card_of_its_scenarios_once():
    models = scenario_models([str(ROOT / "scenarios" / "validation")])
    assert [m.name for m in models] == ["validation-moe", "serving-tiny-moe"]


def test_a_card_the_executor_does_not_build_is_refused_in_one_line():
    fp8 = CARD.model_copy(update={"dtype": "fp8"})
    with pytest.raises(MoesimError, match="cannot calibrate its operators: dtype fp8"):
        build_stack(fp8, torch.device("cpu"), 2**34)


def test_a_step_streams_every_weight_of_the_card_once():
    # per block: attention 4 x 32^2 (QKV and output), 4 experts of 2 x 32 x 64; LM head 64 x 32
    per_block = 4 * 32 * 32 + 4 * 2 * 32 * 64
    assert step_bytes(CARD) == 4 * (2 * per_block + 64 * 32)
