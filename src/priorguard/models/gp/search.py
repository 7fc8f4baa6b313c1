"""Kernel structure search: the simplicity prior, applied.

For a :class:`~priorguard.priors.kernels.StructureSearch` every structure it
allows (sums of products of base kernels) is fitted by MAP, its evidence
approximated, and

    p(structure | y)  ∝  p(y | structure) * p(structure)

with ``p(structure)`` from :func:`priorguard.priors.structure.structure_prior`.
Evidence (the spec's ``evidence`` field):

* ``laplace``: ``log p(y) ≈ log p(y, u*) + P/2 log 2π - 1/2 log det H`` around
  the MAP ``u*`` in unconstrained space, ``H`` the Hessian of the negative log
  joint there (log-det-Jacobian included, so it integrates over the
  coordinates it is Gaussian in), by central differences of the analytic
  gradient (``2P`` calls of the compiled objective, no new compilation;
  :func:`priorguard.models.evidence.laplace_log_evidence`).
  Eigenvalues of ``H`` below :data:`EIGEN_FLOOR` = ``1e-6`` (flat directions, a
  mode on the box edge) are raised to it and counted.
* ``bic``: ``log p(y | theta*) - k/2 log N`` with ``k`` free hyperparameters.

Both are per output and summed (outputs are independent GPs), on the
standardised targets (the same for every structure).

Predictions and function draws average over the structures holding at least
``min_mass`` posterior mass (renormalised): Bayesian model averaging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import count_trace
from priorguard.models.base import Data, FunctionDraws, Prediction
from priorguard.models.evidence import bic, laplace_log_evidence
from priorguard.models.gp.data import GroupedTargets, Prepared, prepare_data
from priorguard.models.gp.exact import PREDICTIVE_STREAM, GPPosterior, posterior_from_map
from priorguard.models.gp.groups import exact_datatree
from priorguard.models.gp.kernels import compile_program
from priorguard.models.gp.objective import MapObjective, fit_map, log_likelihood, map_objective, objective_inputs
from priorguard.models.gp.state import exact_components, mixture_log_density, mixture_moments
from priorguard.priors.kernels import StructureSearch
from priorguard.priors.models import NOISE_FLOOR, MapInference, NutsInference, SparseSpec
from priorguard.priors.structure import KernelStructure, structure_prior

__all__ = ["StructureFit", "StructurePosterior", "fit_structure_search", "log_evidence"]


#: Eigenvalue floor of the Laplace Hessian.
EIGEN_FLOOR = 1e-6
#: Central-difference step (unconstrained units) of the Laplace Hessian.
FD_STEP = 1e-4


@dataclass(frozen=True, eq=False)
class StructureFit:
    """One fitted structure.

    Attributes:
        structure: the candidate.
        expression: e.g. ``linear + periodic``.
        log_prior: log prior mass (normalised over the search).
        log_evidence: approximate ``log p(y | structure)``.
        log_posterior: normalised log posterior mass.
        num_hyperparameters: free hyperparameters per output.
        floored_eigenvalues: Laplace Hessian eigenvalues raised to the floor.
        posterior: the fitted GP at the structure's MAP (None for a structure below
            ``min_mass`` under Laplace evidence: it was never conditioned).
    """

    structure: KernelStructure
    expression: str
    log_prior: float
    log_evidence: float
    log_posterior: float
    num_hyperparameters: int
    floored_eigenvalues: int
    posterior: GPPosterior | None

    @property
    def probability(self) -> float:
        return math.exp(self.log_posterior)


def _laplace(program: Any, prep: Prepared, u_flat: np.ndarray) -> tuple[float, int]:
    objective: MapObjective = map_objective(program, prep.num_outputs, use_prior=True)
    x, y = jnp.asarray(prep.x), jnp.asarray(prep.y)
    return laplace_log_evidence(lambda u: objective.value_and_grad(jnp.asarray(u), x, y), u_flat,
                                eigen_floor=EIGEN_FLOOR, step=FD_STEP)


def _bic(program: Any, prep: Prepared, posterior: GPPosterior) -> float:
    st = posterior.state  # log p(y | theta*) from the factor the posterior already holds
    if st.grouped:  # the factor is over the group averages: the grouped marginal likelihood
        x, y = objective_inputs(program, prep)
        mll = sum(float(log_likelihood(program, {k: v[0, o] for k, v in st.theta.items()}, x,
                                       GroupedTargets(y.counts, y.mean[:, o], y.scatter[:, o])))
                  for o in range(prep.num_outputs))
    else:
        chol, alpha = np.asarray(st.chol[0]), np.asarray(st.alpha[0])  # [O, N, N], [O, N]
        mean = np.asarray(jnp.broadcast_to(
            program.mean_value({k: v[0] for k, v in st.theta.items()}), (prep.num_outputs,)))
        resid = prep.y.T - mean[:, None]
        logdet = 2 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)))
        mll = -0.5 * np.sum(resid * alpha) - 0.5 * logdet - 0.5 * prep.n * prep.num_outputs * math.log(2 * math.pi)
    k = sum(int(np.prod(h.shape)) for h in program.free_hypers)
    return bic(mll, k * prep.num_outputs, prep.n)


def log_evidence(program: Any, prep: Prepared, u_flat: np.ndarray, method: str,
                 posterior: GPPosterior | None = None) -> tuple[float, int]:
    """Approximate ``log p(y | structure)`` at the MAP ``u_flat`` (``laplace`` or ``bic``).

    Returns ``(log evidence, number of Laplace Hessian eigenvalues raised to the floor)``.
    """
    if method == "laplace":
        return _laplace(program, prep, u_flat)
    if method == "bic":
        if posterior is None:
            raise ValueError("BIC evidence needs the conditioned posterior at the MAP")
        return _bic(program, prep, posterior), 0
    raise ValueError(f"evidence must be 'laplace' or 'bic', got {method!r}")


@jax.jit
def _stack_components(states: tuple[Any, ...], weights: Array, x: Array) -> tuple[Array, Array, Array, Array]:
    count_trace("gp/structure_predict")
    means, variances, noises, ws = [], [], [], []
    for st, w in zip(states, weights):
        m, v, a = exact_components(st, x)
        means.append(m)
        variances.append(v)
        noises.append(a)
        ws.append(w * st.weights)
    return jnp.concatenate(ws), jnp.concatenate(means), jnp.concatenate(variances), jnp.concatenate(noises)


@dataclass(frozen=True, eq=False)
class StructureDrawFn:
    """``apply_fn`` of model-averaged draws: draw s follows structure ``params["structure"][s]``."""

    fns: tuple[Any, ...]

    def __call__(self, params: Any, x: Float[Array, "M D"]) -> Float[Array, "M O"]:
        branches = [lambda xx, i=i: self.fns[i](params["components"][i], xx) for i in range(len(self.fns))]
        if len(branches) == 1:
            return branches[0](x)
        return jax.lax.switch(params["structure"], branches, x)


class StructurePosterior(eqx.Module):
    """Posterior over kernel structures with model-averaged predictions and draws.

    Attributes:
        fits: every structure's fit, most probable first.
        active: the fits averaged over (posterior mass >= ``min_mass``).
        weights: renormalised masses of ``active``.
    """

    fits: tuple[StructureFit, ...] = eqx.field(static=True)
    active: tuple[StructureFit, ...] = eqx.field(static=True)
    weights: tuple[float, ...] = eqx.field(static=True)
    search: StructureSearch = eqx.field(static=True)

    @property
    def input_dim(self) -> int:
        return self.fits[0].posterior.input_dim

    @property
    def output_dim(self) -> int:
        return self.fits[0].posterior.output_dim

    @property
    def best(self) -> StructureFit:
        return self.fits[0]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable structures as ``(expression, posterior mass)``."""
        return [(f.expression, f.probability) for f in self.fits[:k]]

    def report(self) -> list[dict[str, Any]]:
        """Every structure: expression, prior, log evidence, posterior mass (most probable first)."""
        return [
            {"structure": f.expression, "prior": math.exp(f.log_prior), "log_evidence": f.log_evidence,
             "posterior": f.probability, "hyperparameters": f.num_hyperparameters,
             "floored_eigenvalues": f.floored_eigenvalues}
            for f in self.fits
        ]

    def _components(self, x: Array) -> tuple[Array, Array, Array, Array]:
        states = tuple(f.posterior.state for f in self.active)
        return _stack_components(states, jnp.asarray(self.weights), x)

    def predict(self, x: Float[Array, "M D"]) -> Prediction:
        """Model-averaged predictive moments ``[M, O]``."""
        w, mean, var, noise = self._components(x)
        return mixture_moments(w, mean, var, noise)

    def log_predictive_density(self, x: Float[Array, "M D"], y: Float[Array, "M O"]) -> Float[Array, " M"]:
        w, mean, var, noise = self._components(x)
        y = jnp.asarray(y, dtype=mean.dtype).reshape(mean.shape[1:])
        return mixture_log_density(jnp.log(w), mean, var + noise, y)

    def sample_functions(self, key: PRNGKeyArray, n: int, *, num_features: int = 512) -> FunctionDraws:
        """``n`` draws; each follows one structure, drawn with its posterior mass."""
        k_s, *k_c = jax.random.split(key, len(self.active) + 1)
        which = jax.random.choice(k_s, len(self.active), (n,), p=jnp.asarray(self.weights))
        draws = [f.posterior.sample_functions(k, n, num_features=num_features) for f, k in zip(self.active, k_c)]
        params = {"structure": which.astype(jnp.int32), "components": tuple(d.params for d in draws)}
        return FunctionDraws(params=params, apply_fn=StructureDrawFn(tuple(d.apply_fn for d in draws)))

    def to_datatree(self) -> Any:
        """The most probable structure's DataTree plus a ``structure_posterior`` group
        (``prior``, ``log_evidence``, ``posterior``, ``hyperparameters`` over ``structure``)."""
        import xarray as xr

        dt = exact_datatree(self.best.posterior)
        ds = xr.Dataset(
            {
                "prior": ("structure", np.asarray([math.exp(f.log_prior) for f in self.fits])),
                "log_evidence": ("structure", np.asarray([f.log_evidence for f in self.fits])),
                "posterior": ("structure", np.asarray([f.probability for f in self.fits])),
                "hyperparameters": ("structure", np.asarray([f.num_hyperparameters for f in self.fits])),
            },
            coords={"structure": [f.expression for f in self.fits]},
        )
        dt["structure_posterior"] = xr.DataTree(ds)
        dt.attrs.update({"structure_search": True, "evidence": self.search.evidence,
                         "kernel": self.best.expression})
        return dt


def fit_structure_search(
    search: StructureSearch,
    data: Data,
    *,
    key: PRNGKeyArray,
    noise: Any = None,
    mean: str = "zero",
    inference: MapInference | NutsInference | None = None,
    sparse: SparseSpec | None = None,
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
    min_mass: float = 1e-3,
    prior_mean: float | None = None,
    noise_floor: float = NOISE_FLOOR,
) -> StructurePosterior:
    """Fits every structure of ``search`` and weighs them by evidence x simplicity prior.

    Args:
        search: the structure search spec (base kernels, ``max_terms``,
            ``simplicity``, ``speed``, ``operators``, ``evidence``, ``ard``).
        data: ``x [N, D]``, ``y [N, O]`` (raw units).
        key: consumed (one subkey per structure).
        noise, mean, feature_names, features, feature_ranges, standardize,
            site_prefix, output_names, prior_mean, noise_floor: as in :func:`~priorguard.models.gp.exact.fit_exact_gp`.
        inference: MAP settings per structure (NUTS is not supported here).
        sparse: must be None (exact GPs only).
        min_mass: posterior mass a structure needs to enter the model average.

    Returns:
        A :class:`StructurePosterior`.
    """
    if isinstance(inference, NutsInference):
        raise ValueError("a kernel structure search fits each structure by MAP for its evidence;"
                         " set inference.method = 'map'")
    if sparse is not None:
        raise ValueError("a kernel structure search runs on exact GPs; remove `sparse` or fix the kernel")
    inference = inference if inference is not None else MapInference(method="map")
    prep = prepare_data(data, feature_names=feature_names, features=features, feature_ranges=feature_ranges,
                        standardize=standardize, output_names=output_names, prior_mean=prior_mean)
    candidates = structure_prior(search, len(prep.feature_names))
    keys = jax.random.split(key, len(candidates))
    rows = []
    for (structure, prob), k in zip(candidates, keys):
        program = compile_program(structure.to_kernel(ard=search.ard), noise=noise, mean=mean,
                                          feature_names=prep.feature_names, site_prefix=site_prefix, zero_at=prep.zero_at,
                                          noise_floor=noise_floor)
        result = fit_map(program, prep, inference, key=k)
        # BIC reads log p(y | theta*) off the factor, so it conditions every structure;
        # with Laplace only the structures that enter the average are conditioned (below).
        predictive_key = jax.random.fold_in(k, PREDICTIVE_STREAM)  # the DataTree's draws, from the fit's key
        posterior = (posterior_from_map(program, prep, result, use_prior=True, predictive_key=predictive_key)
                     if search.evidence == "bic" else None)
        log_ev, floored = log_evidence(program, prep, result.u_flat, search.evidence, posterior)
        k_free = sum(int(np.prod(h.shape)) for h in program.free_hypers)
        rows.append((structure, math.log(prob), log_ev, k_free, floored, posterior, program, result, predictive_key))
    log_post = np.asarray([row[1] + row[2] for row in rows])
    log_post = np.where(np.isfinite(log_post), log_post, -np.inf)
    log_post = log_post - np.logaddexp.reduce(log_post)
    order = np.argsort(-log_post, kind="stable")
    fits = []
    for rank, i in enumerate(order):
        structure, log_prior, log_ev, k_free, floored, posterior, program, result, predictive_key = rows[i]
        if posterior is None and (rank == 0 or math.exp(log_post[i]) >= min_mass):
            posterior = posterior_from_map(program, prep, result, use_prior=True, predictive_key=predictive_key)
        fits.append(StructureFit(structure=structure, expression=structure.expression, log_prior=log_prior,
                                 log_evidence=log_ev, log_posterior=float(log_post[i]),
                                 num_hyperparameters=k_free, floored_eigenvalues=floored, posterior=posterior))
    fits = tuple(fits)
    active = tuple(f for f in fits if f.probability >= min_mass) or fits[:1]
    w = np.asarray([f.probability for f in active])
    return StructurePosterior(fits=fits, active=active, weights=tuple(float(v) for v in w / w.sum()),
                              search=search)
