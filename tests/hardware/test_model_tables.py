"""Interpolation of a card's measured tables, by hand; which card's tables apply."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.config import ModelSpec
from moesim.config.model_tables import ModelTables
from moesim.hardware.model_tables import curve, grid, tables_for
from tests.conftest import SMALL_MOE
from tests.sim.test_layer_costs_tables import hand_tables


def test_a_curve_is_exact_at_its_points_and_linear_between():
    points, seconds = [1.0, 4.0, 8.0], [2.0, 5.0, 13.0]
    assert curve(points, seconds, np.array([1.0, 4.0, 8.0])) == pytest.approx(seconds)
    assert curve(points, seconds, np.array([2.0, 6.0])) == pytest.approx([3.0, 9.0])


def test_beyond_the_last_point_a_curve_continues_its_last_segment_never_falling():
    assert curve([1.0, 4.0, 8.0], [2.0, 5.0, 13.0], 10.0) == pytest.approx(17.0)
    assert curve([1.0, 2.0], [3.0, 2.0], 5.0) == pytest.approx(2.0)


def test_below_the_first_point_a_curve_continues_its_first_segment_down_to_its_share():
    # first segment: 4 - 0.5 x 1 = 3.5; share of the first point: 4 x 0.5 / 1 = 2
    assert curve([1.0, 2.0], [4.0, 5.0], 0.5) == pytest.approx(3.5)
    # a steep first segment would go negative: the share, 1 x 0.5
    assert curve([1.0, 2.0], [1.0, 10.0], 0.5) == pytest.approx(0.5)


def test_a_grid_is_bilinear_inside():
    columns, rows = [1.0, 3.0], [10.0, 20.0]
    seconds = [[1.0, 3.0], [5.0, 11.0]]
    assert grid(columns, rows, seconds, 1.0, 20.0) == pytest.approx(5.0)
    # at x = 2: 2 (row 10) and 8 (row 20); at y = 15 halfway: 5
    assert grid(columns, rows, seconds, np.array([2.0, 2.0]), np.array([15.0, 10.0])) == (
        pytest.approx([5.0, 2.0])
    )


def test_tables_apply_to_their_card_only():
    model = ModelSpec.model_validate(SMALL_MOE)
    tables = (ModelTables(**hand_tables(model, "other")), ModelTables(**hand_tables(model)))
    assert tables_for(tables, model) is tables[1]
    assert tables_for(tables, model.model_copy(update={"d_ffn": 128})) is None
    assert tables_for(tables, model.model_copy(update={"dtype": "fp16"})) is None
