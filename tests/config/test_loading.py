"""Scenario loading: references, overrides, and one clear error per kind of bad input."""

from pathlib import Path

import pytest
import yaml

from moesim.config import load_scenario
from moesim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").rglob("*.yaml"))
SHIPPED = [p for p in SHIPPED if not {"models", "paper", "sweeps", "advise"} & set(p.parts)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    scenario = load_scenario(path)
    assert scenario.name == raw["name"]
    cluster = raw["cluster"]
    per_node = cluster["gpus_per_node"]
    pools = cluster.get("pools", [{"nodes": cluster.get("nodes")}])  # pools fill the nodes
    assert scenario.cluster.gpus == sum(
        p["nodes"] * p.get("gpus_per_node", per_node) for p in pools
    )
    assert scenario.workload.batch_size == raw["workload"].get("batch_size")  # serving: None
    card = raw["model"] if isinstance(raw["model"], str) else raw["model"]["name"]
    assert scenario.model.name == card
    device = raw["cluster"]["device"]
    assert scenario.cluster.device.name == device
    assert scenario.policies.gating.name == raw["policies"]["gating"]["name"]


def test_each_pool_may_name_its_own_device(tmp_path) -> None:
    pools = [
        {"role": "prefill", "nodes": 1, "device": "h200-sxm-141gb"},
        {"role": "decode", "nodes": 2},
    ]
    raw = yaml.safe_load((ROOT / "scenarios" / "serving-disaggregated.yaml").read_text())
    raw["model"] = str(ROOT / "scenarios" / "models" / "mixtral-8x7b.yaml")
    raw["cluster"] = {"gpus_per_node": 8, "device": "h100-sxm5-80gb", "pools": pools}
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump(raw))
    scenario = load_scenario(path)
    prefill, decode = scenario.clusters()
    assert (prefill.device.name, prefill.gpus) == ("h200-sxm-141gb", 8)
    assert (decode.device.name, decode.gpus) == ("h100-sxm5-80gb", 16)
    assert scenario.cluster.nodes == 3  # the nodes the pools fill
    del raw["cluster"]["device"]  # the decode pool then has none
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"cluster\.device: required: a pool names no device"):
        load_scenario(path)


def test_units_are_stored_as_si_numbers() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    device = scenario.cluster.device
    assert device.memory.capacity == 80e9
    assert device.memory.bandwidth == 2039e9
    assert device.compute.peak_flops["fp16"] == 312e12
    assert device.links.network.bandwidth == 25e9  # 200 Gb/s
    assert device.compute.launch_overhead == pytest.approx(5e-6)


def test_overrides_reach_nested_fields_and_referenced_cards() -> None:
    scenario = load_scenario(
        ROOT / "scenarios" / "quickstart.yaml",
        [
            "workload.batch_size=128",
            "model.top_k=1",
            "cluster.device=h100-sxm5-80gb",
            "policies.gating={name: static, capacity_factor: 2.0}",
        ],
    )
    assert scenario.workload.batch_size == 128
    assert scenario.model.top_k == 1 and scenario.model.name == "paper-lm"
    assert scenario.cluster.device.name == "h100-sxm5-80gb"
    assert scenario.policies.gating.name == "static"
    assert scenario.policies.gating.capacity_factor == 2.0


def _write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        (lambda d: d["workload"].update(batch_size="many"), "workload.batch_size", "integer"),
        (lambda d: d["workload"].update(batch_size=-3), "workload.batch_size", "greater than"),
        (lambda d: d["workload"].update(colour="red"), "workload.colour", "unknown key"),
        (lambda d: d["workload"].update(phase="train"), "workload.phase", "prefill"),
        (lambda d: d["cluster"].update(device="tpu-v9"), "cluster.device", "no hardware profile"),
        (lambda d: d.update(model="gpt-9"), "model", "no model card"),
        (
            lambda d: d["policies"].update(gating={"name": "magic"}),
            "policies.gating",
            "unknown gating policy",
        ),
        (
            lambda d: d["policies"].update(gating={"name": "static", "capacity_factor": -1}),
            "policies.gating.capacity_factor",
            "greater than",
        ),
        (lambda d: d["workload"]["routing"].update(skew="x"), "workload.routing.skew", "number"),
        (lambda d: d["cluster"].update(nodes=0), "cluster.nodes", "greater than"),
        (lambda d: d.pop("workload"), "workload", "missing"),
    ],
)
def test_bad_scenarios_name_file_field_and_expectation(tmp_path, edit, field, fragment) -> None:
    data = _base()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    error = caught.value
    assert error.file == str(path)
    assert error.field == field
    assert fragment in error.message
    assert "\n" not in str(error)


def test_an_inline_device_with_a_negative_size_names_its_path(tmp_path) -> None:
    data = _base()
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "a100-sxm4-80gb.yaml").read_text())
    profile["memory"]["capacity"] = "-80GB"
    data["cluster"]["device"] = profile
    with pytest.raises(ConfigError) as caught:
        load_scenario(_write(tmp_path, data))
    assert caught.value.field == "cluster.device.memory.capacity"


def test_an_error_inside_a_referenced_card_names_the_card(tmp_path) -> None:
    (tmp_path / "models").mkdir()
    card = yaml.safe_load((ROOT / "scenarios" / "models" / "paper-lm.yaml").read_text())
    card["top_k"] = 1000
    (tmp_path / "models" / "broken.yaml").write_text(yaml.safe_dump(card))
    data = _base()
    data["model"] = "broken"
    with pytest.raises(ConfigError) as caught:
        load_scenario(_write(tmp_path, data))
    assert caught.value.file == str(tmp_path / "models" / "broken.yaml")
    assert "top_k = 1000 exceeds num_experts = 512" in caught.value.message


def test_a_dtype_the_device_lacks_is_an_error(tmp_path) -> None:
    data = _base()
    data["model"] = "deepseek-v3"  # fp8
    with pytest.raises(ConfigError, match="no peak_flops for the model's dtype fp8"):
        load_scenario(_write(tmp_path, data))


def test_malformed_yaml_reports_the_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nworkload: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert caught.value.file == str(path)
    assert "line 3" in caught.value.message or "line 2" in caught.value.message


def test_missing_file_and_bad_override() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario("does/not/exist.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_scenario(ROOT / "scenarios" / "quickstart.yaml", ["workload.batch_size"])
    with pytest.raises(ConfigError) as caught:
        load_scenario(ROOT / "scenarios" / "quickstart.yaml", ["workload.batch_size=0"])
    assert caught.value.field == "--set workload.batch_size"
    assert caught.value.file is None
    with pytest.raises(ConfigError) as caught:
        load_scenario(ROOT / "scenarios" / "quickstart.yaml", ["model.top_k=0"])
    assert str(caught.value).startswith("--set model.top_k: ")  # not the card's fault
    with pytest.raises(ConfigError, match="valid integer"):
        load_scenario(ROOT / "scenarios" / "quickstart.yaml", ["workload.batch_size=true"])


def test_a_calibrated_profile_with_an_unquoted_date_loads(tmp_path) -> None:
    profile = yaml.safe_load((ROOT / "hardware_profiles" / "a100-sxm4-80gb.yaml").read_text())
    profile["compute"]["provenance"] = {
        "source": "calibrated",
        "ref": "moesim calibrate",
        "measured_on": "cuda:0",
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(profile))
    text = path.read_text().replace(
        "measured_on: cuda:0", "measured_on: cuda:0\n    date: 2026-11-24"
    )
    path.write_text(text)
    data = _base()
    data["cluster"]["device"] = str(path)
    scenario = load_scenario(_write(tmp_path, data))
    assert str(scenario.cluster.device.compute.provenance.date) == "2026-11-24"
