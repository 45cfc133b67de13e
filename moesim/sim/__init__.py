"""The SimPy cluster model: local work, collectives, memory and the inference loop."""

from moesim.sim.engine import OutOfMemoryError, simulate

__all__ = ["OutOfMemoryError", "simulate"]
