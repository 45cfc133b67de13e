"""moesim: predict throughput, latency and memory of MoE inference on multi-GPU clusters."""

from moesim import policies as _policies  # noqa: F401  (registers the built-in policies)
from moesim.api import load_scenario, run, write_outputs
from moesim.errors import ConfigError, MoesimError
from moesim.metrics import Result

__all__ = ["ConfigError", "MoesimError", "Result", "load_scenario", "run", "write_outputs"]
__version__ = "0.1.0"
