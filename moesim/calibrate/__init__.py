"""Calibration: micro-benchmarks on the local device (CPU or CUDA GPU) fitted into a hardware
profile with ``source: calibrated``.

Measured are matmul times over a grid of shapes, copy times over the host link, memory
bandwidth, launch overhead and all-to-all times among 2 or more processes; with model cards,
also each card's operators as the reference executor runs them (``calibrate.model``). Needs
torch, which is imported here only (``pip install moesim[torch]``). ``calibrate_profile``
returns the profile as a dict; ``write_profile`` writes it as YAML that
``moesim.config.load_hardware_profile`` reads.
"""

from moesim.errors import MoesimError

try:
    import torch  # noqa: F401
except ImportError:
    raise MoesimError("calibration needs torch: pip install 'moesim[torch]'") from None

from moesim.calibrate.profile import calibrate_profile
from moesim.calibrate.writing import write_profile

__all__ = ["calibrate_profile", "write_profile"]
