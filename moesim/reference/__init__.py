"""The reference executor: the scenario's MoE inference run for real with torch, one process
per simulated GPU over torch.distributed, to check the simulator's predictions.

Needs the ``torch`` extra; ``moesim`` itself imports without it.
"""

from moesim.reference.executor import DEFAULT_WARMUP_STEPS, execute
from moesim.reference.serving import Replay, replay_steps, serve
from moesim.reference.workplan import UnsupportedScenarioError, make_workplan

__all__ = [
    "DEFAULT_WARMUP_STEPS",
    "Replay",
    "UnsupportedScenarioError",
    "execute",
    "make_workplan",
    "replay_steps",
    "serve",
]
