"""The router: round robin in arrival order, least_loaded by outstanding tokens, by hand."""

import numpy as np

from moesim.policies import KVBlocks, ServingState
from moesim.sim.serving_router import Router, outstanding_tokens

PROMPT = np.array([10, 20, 30, 40, 5, 5])
OUTPUT = np.array([4, 4, 4, 4, 1, 1])


def _states(groups: int) -> list[ServingState]:
    return [ServingState(PROMPT, OUTPUT, KVBlocks(100, 16)) for _ in range(groups)]


def test_round_robin_takes_the_groups_in_turn_across_calls() -> None:
    router = Router("round_robin", _states(3))
    assert router.route(np.array([0, 1])).tolist() == [0, 1]
    assert router.route(np.array([2, 3, 4])).tolist() == [2, 0, 1]


def test_outstanding_tokens_count_what_is_left_of_prompt_and_output() -> None:
    state = _states(1)[0]
    state.arrive([0, 1])  # 10 + 4 and 20 + 4 tokens owed
    assert outstanding_tokens(state) == 38
    state.context_R[0], state.generated_R[0] = 10, 1  # request 0 prefilled, first token out
    assert outstanding_tokens(state) == 38 - 10 - 1
    state.context_R[0], state.generated_R[0] = 12, 3  # two decodes later: 1 token owed
    assert outstanding_tokens(state) == 1 + 24


def test_least_loaded_sends_each_request_to_the_group_owing_fewest_tokens() -> None:
    states = _states(2)
    states[0].arrive([3])  # group 0 owes 44 tokens, group 1 none
    router = Router("least_loaded", states)
    # 0 (14 tokens) -> group 1 (0); 1 (24) -> group 1 (14 < 44); 2 (34) -> group 1 (38 < 44);
    # 4 (6) -> group 0 (44 < 72); ties go to the lowest group
    assert router.route(np.array([0, 1, 2, 4])).tolist() == [1, 1, 1, 0]
    # tokens in flight to a group count too; and a caller's own per-request tokens
    extra = np.array([0, 100])
    assert router.route(np.array([5]), extra, np.array([3])).tolist() == [0]
    # the state's own lengths by default: 14 tokens to group 1 (0 < 5), then 24 to group 0
    fresh = Router("least_loaded", _states(2))
    assert fresh.route(np.array([0, 1]), np.array([5, 0])).tolist() == [1, 0]
