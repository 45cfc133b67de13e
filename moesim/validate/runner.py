"""``moesim validate``: every scenario simulated from a calibrated profile and run for real.

The prediction comes from the profile (calibrated first on the same device unless one is given),
never from the run it is compared with. Each scenario's predicted and measured ``result.json``
files are kept beside the report, in a folder per scenario named after it (sanitised, unique).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable
from pathlib import Path

from moesim.config import ModelSpec, Scenario, SyntheticRouting, load_scenario
from moesim.errors import MoesimError
from moesim.files import json_text
from moesim.metrics import Result
from moesim.reference import DEFAULT_WARMUP_STEPS, UnsupportedScenarioError, execute
from moesim.reference.workplan import check_model
from moesim.sim import simulate
from moesim.validate.compare import compare
from moesim.validate.report import Report
from moesim.validate.serving import run_serving

__all__ = ["scenario_files", "scenario_folders", "scenario_models", "token_level", "validate"]

Progress = Callable[[str, int, int], None]
_REPORT_FILES = (
    "report.csv",
    "report.md",
    "report.png",
    "summary.csv",
    "replay.csv",
    "replay.png",
    "profile.yaml",
)
_MAX_FOLDER = 80  # characters of a scenario's folder name


def scenario_files(paths: list[str]) -> list[Path]:
    """The scenario YAML files named, folders expanded (sorted, not recursive)."""
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if not found:
                raise MoesimError(f"{path}: no scenario files (*.yaml) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise MoesimError(f"{path}: no such scenario file or folder")
    return files


def scenario_models(paths: list[str]) -> list[ModelSpec]:
    """The distinct model cards of the scenarios named that the reference executor runs, in
    order: what a calibration before validating them measures (``moesim calibrate --model``)."""
    models: list[ModelSpec] = []
    for path in scenario_files(paths):
        scenario = load_scenario(path)
        try:
            check_model(scenario)
        except UnsupportedScenarioError:
            continue  # not run, so not calibrated for
        if scenario.model.num_experts and scenario.model not in models:
            models.append(scenario.model)
    return models


def _load(path: Path, profile: Path) -> Scenario:
    return load_scenario(path, [f"cluster.device={profile.resolve()}"])


def _dump(path: Path, result: Result) -> None:
    path.write_text(json_text(result.model_dump(mode="json"), str(path)) + "\n")


def token_level(scenario: Scenario) -> Scenario:
    """``scenario`` with its synthetic routing drawn per token, as the reference replays it,
    so that both sides see the same tokens go to the same experts."""
    routing = scenario.workload.routing
    if not isinstance(routing, SyntheticRouting) or routing.resolution == "tokens":
        return scenario
    tokens = routing.model_copy(update={"resolution": "tokens"})
    workload = scenario.workload.model_copy(update={"routing": tokens})
    return scenario.model_copy(update={"workload": workload})


def scenario_folders(names: list[str]) -> list[str]:
    """A folder name inside ``--out`` per scenario name: only letters, digits, ``_``, ``-`` and
    inner dots (never a path, never hidden), unique (case-insensitively, ``-2``, ``-3`` added)
    and never one of the report's own files."""
    taken = set(_REPORT_FILES)
    folders = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-")[:_MAX_FOLDER] or "scenario"
        folder, copy = base, 1
        while folder.lower() in taken:
            copy += 1
            folder = f"{base}-{copy}"
        taken.add(folder.lower())
        folders.append(folder)
    return folders


def validate(
    paths: list[str],
    *,
    profile: Path,
    out: Path,
    repeats: int = 3,
    device: str = "cpu",
    warmup: int = DEFAULT_WARMUP_STEPS,
    replay: bool = True,
    calibration_load: tuple[float, float] | None = None,
    on_progress: Progress | None = None,
) -> Report:
    """Simulate and run each scenario; compare; write the report into ``out``, each scenario's
    results into its folder there (``scenario_folders``). A serving scenario is served in real
    time and (``replay``) replays the simulator's step plans (``serving.run_serving``).
    ``calibration_load``: the machine's 1-minute load average before and after the profile
    was calibrated, if known."""
    if repeats < 1:
        raise MoesimError(f"--repeats: expected at least 1, got {repeats}")
    scenarios = [_load(path, profile) for path in scenario_files(paths)]  # all valid up front
    names = [scenario.name for scenario in scenarios]
    folders = scenario_folders(names)
    labels = [name if names.count(name) == 1 else f for name, f in zip(names, folders, strict=True)]
    report = Report(
        rows=[],
        device="",
        profile=str(profile),
        repeats=repeats,
        date=datetime.date.today().isoformat(),
        calibration_load=calibration_load,
    )
    serving = [scenario.workload.phase == "serving" for scenario in scenarios]
    total = sum(1 + repeats + (replay and s) for s in serving)
    done = 0
    load_before = os.getloadavg()[0]
    for scenario, name, label in zip(scenarios, folders, labels, strict=True):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("measured-*.json"):  # from an earlier run with more repeats
            stale.unlink()
        if scenario.workload.phase == "serving":
            planned = done + 1 + repeats + replay

            def ran(label: str = label) -> None:
                nonlocal done
                done += 1
                if on_progress is not None:
                    on_progress(label, done, total)

            try:
                run = run_serving(
                    token_level(scenario),
                    label,
                    folder,
                    repeats=repeats,
                    device=device,
                    warmup=warmup,
                    replay=replay,
                    dump=_dump,
                    on_run=ran,
                )
            except UnsupportedScenarioError as error:
                report.skipped[label] = str(error)
                done = planned
                continue
            report.device = run.device
            report.rows += run.rows
            if run.replay is not None:
                report.replays.append(run.replay)
            continue
        predicted = Result.from_records(simulate(token_level(scenario)))
        _dump(folder / "predicted.json", predicted)
        done += 1
        measured = []
        try:
            for repeat in range(repeats):
                if on_progress is not None:
                    on_progress(label, done, total)
                result = Result.from_records(execute(scenario, device=device, warmup=warmup))
                _dump(folder / f"measured-{repeat + 1}.json", result)
                measured.append(result)
                done += 1
        except UnsupportedScenarioError as error:
            report.skipped[label] = str(error)
            done += repeats - len(measured)
            continue
        report.device = measured[0].device
        report.rows += compare(predicted, measured, label)
    report.reference_load = (load_before, os.getloadavg()[0])
    if on_progress is not None:
        on_progress("done", total, total)
    report.write(out)
    return report
