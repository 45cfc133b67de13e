"""Serving metrics from hand-made request records."""

import numpy as np
import pytest

from moesim.metrics.serving import RequestRecords, ServingRecords, serving_result

NAN = float("nan")


def _records(**slo) -> ServingRecords:
    # request 0: arrives 0, scheduled 0.5, first token 1.0, 5 tokens done at 3.0
    # request 1: arrives 1, scheduled 1.0, first token 2.0, 1 token (no TPOT), done at 2.0
    # request 2: arrives 2, scheduled 2.5, first token 4.0, still decoding at the end (4.5)
    # request 3: arrives 4, never scheduled
    requests = RequestRecords(
        arrival_s=np.array([0.0, 1.0, 2.0, 4.0]),
        scheduled_s=np.array([0.5, 1.0, 2.5, NAN]),
        first_token_s=np.array([1.0, 2.0, 4.0, NAN]),
        finish_s=np.array([3.0, 2.0, NAN, NAN]),
        prompt_tokens=np.array([10, 20, 30, 40]),
        output_tokens=np.array([5, 1, 8, 2]),
        preemptions=np.array([0, 1, 0, 0]),
    )
    return ServingRecords(
        requests=requests,
        itl_s=np.array([0.5, 0.5, 0.5, 0.5, 0.25]),
        prefill_tokens=np.array([10, 20, 30]),
        decode_tokens=np.array([0, 1, 2]),
        running=np.array([1, 2, 1]),
        waiting=np.array([0, 0, 1]),
        kv_blocks=np.array([2, 6, 4]),
        kv_capacity_blocks=10,
        duration_s=4.5,
        **slo,
    )


def test_summary_follows_the_definitions() -> None:
    result = serving_result(_records())
    assert (result.arrived, result.completed, result.running, result.waiting) == (4, 2, 1, 1)
    assert result.ttft_s.mean == pytest.approx((1.0 + 1.0 + 2.0) / 3)  # unfinished excluded
    assert result.tpot_s.p50 == pytest.approx(0.5)  # (3 - 1) / 4 for request 0 only
    assert result.e2e_s.mean == pytest.approx((3.0 + 1.0) / 2)
    assert result.queue_s.mean == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert result.itl_s.p50 == 0.5
    assert result.input_tokens_per_s == pytest.approx(30 / 4.5)  # completed requests' prompts
    assert result.output_tokens_per_s == pytest.approx(6 / 4.5)
    assert result.goodput_requests_per_s == pytest.approx(2 / 4.5)  # no SLO: every completion
    assert result.slo_attainment is None and result.slo_met is None
    assert result.preemptions == 1 and result.max_running == 2
    assert result.kv_cache.model_dump() == {
        "capacity_blocks": 10,
        "peak_blocks": 6,
        "mean_blocks": 4.0,
    }


def test_slo_attainment_counts_arrived_requests_that_completed_within_targets() -> None:
    # TTFT <= 1.0: request 0 (1.0) and request 1 (1.0) meet it; TPOT <= 0.5 as well
    result = serving_result(_records(slo_ttft_s=1.0, slo_tpot_s=0.5, slo_percentile=50))
    assert result.slo_attainment == pytest.approx(2 / 4)
    assert result.goodput_requests_per_s == pytest.approx(2 / 4.5)
    # nearest-rank p50 over arrived requests, unfinished ones infinite: TTFT [1, 1, 2, inf]
    # -> 1 (met), TPOT [0.5, inf, inf] (the one-token request has none) -> inf (missed)
    assert result.slo_met is False
    assert serving_result(_records(slo_ttft_s=2.0, slo_percentile=50)).slo_met is True
    tight = serving_result(_records(slo_tpot_s=0.4))
    assert tight.slo_attainment == pytest.approx(1 / 4)  # only the one-token request
