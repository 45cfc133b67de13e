"""Bounded resources and one-line errors for sweep files and options."""

from __future__ import annotations

import pytest

from moesim.cli import main
from moesim.errors import ConfigError, MoesimError
from moesim.sweep import MAX_POINTS, load_sweep
from moesim.sweep.executors import run_ray, usable_cores, worker_count
from tests.sweep.helpers import TINY, write_sweep


def test_a_huge_grid_is_refused_by_its_count_before_expansion(tmp_path):
    spec = write_sweep(tmp_path, {"grid": {f"k{i}": list(range(10)) for i in range(10)}})
    with pytest.raises(ConfigError) as caught:
        load_sweep(spec)
    assert str(caught.value) == (
        f"{spec}: expands to 10,000,000,000 points; a sweep runs at most {MAX_POINTS:,}"
    )


def test_an_alias_bomb_in_a_sweep_file_is_refused(tmp_path, capsys):
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    spec = tmp_path / "bomb.yaml"
    spec.write_text("\n".join([f"base: {TINY}", "grid:", *(f"  {line}" for line in lines)]))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moesim: error: {spec}: ") and "expands to more than" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("distribution", "words"),
    [
        ({"uniform": [float("nan"), 1.0]}, "finite"),
        ({"uniform": [0.0, float("inf")]}, "finite"),
        ({"uniform": [-1e308, 1e308]}, "too wide"),
        ({"loguniform": [1.0, float("inf")]}, "finite"),
        ({"randint": [0, 2**70]}, "64-bit"),
    ],
)
def test_distributions_that_cannot_be_drawn_are_one_line(tmp_path, capsys, distribution, words):
    spec = write_sweep(tmp_path, {"random": {"n": 2, "params": {"seed": distribution}}})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moesim: error: {spec}: random.params.seed") and words in err
    assert "\n" not in err


def test_the_readmes_nan_form_is_one_line(tmp_path, capsys):
    spec = tmp_path / "nan.yaml"
    spec.write_text(f"base: {TINY}\nrandom: {{n: 2, params: {{seed: {{uniform: [.nan, 1]}}}}}}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "bounds must be finite" in capsys.readouterr().err


def test_workers_are_capped_at_the_points_and_the_cores():
    assert worker_count(1000, 20) == min(20, usable_cores())
    assert worker_count(1000, 1) == 1 and worker_count(None, 3) == min(3, usable_cores())
    assert worker_count(2, 0) == 1


def test_a_ray_client_address_without_the_client_is_one_line(monkeypatch):
    import importlib.util

    import ray

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else real(name, *a)
    )
    with pytest.raises(MoesimError, match=r"pip install 'ray\[client\]'"):
        run_ray("base.yaml", [], "ray://127.0.0.1:1", lambda row: None)
    assert not ray.is_initialized()
