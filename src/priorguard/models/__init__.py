"""T, I and W as Bayesian models behind one :class:`Posterior` contract.

GPs are plain JAX (:mod:`priorguard.models.gp`, with a GPJax twin for the tests);
BNNs are numpyro models. Both are fitted from a spec section (``fit_gp``, ``fit_bnn``,
or ``fit_role`` for any role) or from objects directly.
"""

from priorguard.models.base import Data, FunctionDraws, Posterior, Prediction, as_data
from priorguard.models.bnn import BNN, BNNPosterior, fit_bnn
from priorguard.models.gp import GPPosterior, fit_gp
from priorguard.models.roles import fit_role

__all__ = [
    "BNN",
    "BNNPosterior",
    "Data",
    "FunctionDraws",
    "GPPosterior",
    "Posterior",
    "Prediction",
    "as_data",
    "fit_bnn",
    "fit_gp",
    "fit_role",
]
