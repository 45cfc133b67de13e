"""The SimPy cluster model: local work, collectives, memory and the inference loop."""

from moesim.sim.engine import simulate

__all__ = ["simulate"]
