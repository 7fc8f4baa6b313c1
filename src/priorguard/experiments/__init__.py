"""What users run: the experiment spec, shipped experiments, the runner and sweeps.

The spec names are imported eagerly (pydantic only); the runner and the sweep, which
start JAX, are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from priorguard.experiments.catalog import load_spec, shipped_experiments
from priorguard.experiments.overrides import parse_override
from priorguard.experiments.spec import (
    AuditSpec,
    CemSpec,
    DataSpec,
    ExperimentSpec,
    PlannerSpec,
    ProposalSpec,
    VetoSpec,
)

_LAZY = {"run_experiment": "priorguard.experiments.runner", "run_sweep": "priorguard.experiments.sweep"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuditSpec",
    "CemSpec",
    "DataSpec",
    "ExperimentSpec",
    "PlannerSpec",
    "ProposalSpec",
    "VetoSpec",
    "load_spec",
    "parse_override",
    "run_experiment",
    "run_sweep",
    "shipped_experiments",
]
