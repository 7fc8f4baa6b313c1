"""Gaussian processes: exact (MAP or NUTS), sparse variational, and kernel structure search.

:func:`fit_gp` fits the GP a :class:`~priorguard.priors.models.GPModel` declares;
:func:`fit_exact_gp`, :func:`fit_sparse_gp`, :func:`fit_structure_search` and
:func:`condition_gp` are the lower-level paths from spec objects. Every
posterior is a :class:`~priorguard.models.base.Posterior`.

Modules, from the bottom: ``features`` (random features), ``linalg``,
``kernels`` (the compiled kernel), ``data``, ``objective`` (model and MAP),
``state`` (conditioning), ``draws``, ``loo``, ``exact``, ``sparse``, ``search``,
``fit`` (the dispatch), ``registry`` (kernel kinds from outside); ``_gpjax`` holds the GPJax twin for tests, benchmarks and ``GPPosterior.to_gpjax``.
"""

from priorguard.models.gp.exact import GPPosterior, condition_gp, fit_exact_gp
from priorguard.models.gp.fit import fit_gp
from priorguard.models.gp.linalg import GPNumericalError
from priorguard.models.gp.loo import leave_one_state_out
from priorguard.models.gp.registry import register_kernel_ops
from priorguard.models.gp.search import StructureFit, StructurePosterior, fit_structure_search
from priorguard.models.gp.sparse import SparseGPPosterior, fit_sparse_gp
from priorguard.models.gp.state import JitterWarning

__all__ = [
    "GPNumericalError",
    "GPPosterior",
    "JitterWarning",
    "SparseGPPosterior",
    "StructureFit",
    "StructurePosterior",
    "condition_gp",
    "fit_exact_gp",
    "fit_gp",
    "fit_sparse_gp",
    "fit_structure_search",
    "leave_one_state_out",
    "register_kernel_ops",
]
