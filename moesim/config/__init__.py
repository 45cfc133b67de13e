"""The validated schema of scenarios, model cards and hardware profiles, and YAML loading."""

from moesim.config.hardware import LINK_KINDS, HardwareProfile, LinkSpec
from moesim.config.loading import (
    find_file,
    load_hardware_profile,
    load_model_card,
    load_scenario,
    parse_override,
    read_yaml,
    shipped_names,
)
from moesim.config.measured import AttentionCurves, GemmTable, MeasuredCurve
from moesim.config.model import DTYPE_BYTES, MlaSpec, ModelSpec
from moesim.config.parallel import ParallelSpec
from moesim.config.registry import (
    CACHE,
    GATING,
    OVERLAP,
    PLACEMENT,
    SCHEDULER,
    Policy,
    PolicyParams,
    Registry,
)
from moesim.config.scenario import (
    ClusterSpec,
    PoliciesSpec,
    Scenario,
    SyntheticRouting,
    TraceRouting,
    WorkloadSpec,
)
from moesim.config.serving import MAX_REQUESTS, ArrivalSpec, LengthSpec, RequestsSpec, SloSpec

__all__ = [
    "CACHE",
    "DTYPE_BYTES",
    "GATING",
    "LINK_KINDS",
    "MAX_REQUESTS",
    "OVERLAP",
    "PLACEMENT",
    "SCHEDULER",
    "ArrivalSpec",
    "AttentionCurves",
    "ClusterSpec",
    "GemmTable",
    "HardwareProfile",
    "LengthSpec",
    "LinkSpec",
    "MeasuredCurve",
    "MlaSpec",
    "ModelSpec",
    "ParallelSpec",
    "PoliciesSpec",
    "Policy",
    "PolicyParams",
    "Registry",
    "RequestsSpec",
    "Scenario",
    "SloSpec",
    "SyntheticRouting",
    "TraceRouting",
    "WorkloadSpec",
    "find_file",
    "load_hardware_profile",
    "load_model_card",
    "load_scenario",
    "parse_override",
    "read_yaml",
    "shipped_names",
]
