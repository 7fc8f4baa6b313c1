"""Declarative priors: distributions with hyperpriors, kernels, simplicity and speed priors.

What a model believes before data; knows no environment and no experiment (the
experiment spec that combines them is :mod:`priorguard.experiments.spec`).
"""

from priorguard.priors.distributions import Prior, check_support, distribution_names
from priorguard.priors.errors import SpecError, SpecIssue
from priorguard.priors.kernels import (
    BASE_KINDS,
    KERNEL_KINDS,
    CompositeKernel,
    LinearKernel,
    PeriodicKernel,
    PolynomialKernel,
    RationalQuadraticKernel,
    StationaryKernel,
    StructureSearch,
    WhiteKernel,
    default_prior,
    describe_kernel,
    parse_kernel,
)
from priorguard.priors.models import (
    BNNModel,
    DepthSpeedPrior,
    EnsembleInference,
    GPModel,
    Horseshoe,
    InstrumentalBNN,
    InstrumentalGP,
    MapInference,
    NutsInference,
    RegularisedHorseshoe,
    SparseSpec,
    SviInference,
)
from priorguard.priors.structure import (
    KernelStructure,
    depth_prior,
    enumerate_structures,
    structure_prior,
)

__all__ = [
    "BASE_KINDS",
    "BNNModel",
    "CompositeKernel",
    "DepthSpeedPrior",
    "EnsembleInference",
    "GPModel",
    "Horseshoe",
    "InstrumentalBNN",
    "InstrumentalGP",
    "KERNEL_KINDS",
    "KernelStructure",
    "LinearKernel",
    "MapInference",
    "NutsInference",
    "PeriodicKernel",
    "PolynomialKernel",
    "Prior",
    "RationalQuadraticKernel",
    "RegularisedHorseshoe",
    "SparseSpec",
    "SpecError",
    "SpecIssue",
    "StationaryKernel",
    "StructureSearch",
    "SviInference",
    "WhiteKernel",
    "check_support",
    "default_prior",
    "depth_prior",
    "describe_kernel",
    "distribution_names",
    "enumerate_structures",
    "parse_kernel",
    "structure_prior",
]
