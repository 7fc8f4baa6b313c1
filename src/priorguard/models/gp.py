"""Exact Gaussian processes: MAP or NUTS hyperparameters, pathwise function draws.

Shapes used throughout:
    N: training points; M: query points.
    D: input columns of ``data.x`` (the model reads the columns its spec names).
    O: outputs (one independent GP per output; kernels and features vmapped, factorisations
       mapped with ``lax.map``, see :func:`priorguard.models._gpjax.map_unbatched`).
    S: hyperparameter samples (1 for MAP; thinned NUTS draws otherwise).

What a fit does:

1. **Inputs and targets.** Columns are scaled to the unit cube with the declared
   ``feature_ranges`` (else the training minimum and maximum), targets are
   standardised per output; both transforms are stored and undone in
   ``predict``, ``log_predictive_density`` and function draws, so callers only
   ever see raw units.
2. **Hyperparameters.** Every hyperparameter is a numpyro site with its
   declared (or default) prior: ``{prefix}/kernel/lengthscale``,
   ``{prefix}/kernel/terms/0/variance``, ``{prefix}/noise`` (observation noise
   *std*), ``{prefix}/mean/constant``; hyperpriors add ``{site}/{param}``.

   * ``map``: the mode of the posterior *in unconstrained space* (positive
     parameters as logs, numpyro's ``biject_to(support)``), i.e. log marginal
     likelihood + log prior + log-det-Jacobian. That is the density the
     Laplace evidence of :mod:`priorguard.models.structure_search` integrates,
     and it keeps the mode away from the boundary. Optimised by SciPy's
     L-BFGS-B on one jitted value-and-gradient per step (unconstrained values
     boxed to ``[-15, 15]``), or by Adam in one compiled ``lax.scan``; the
     objective is compiled once per (kernel structure, priors, O) and reused by
     every later fit of the same shapes. Repeated inputs (discrete
     environments revisit a few states thousands of times) are grouped: the
     same marginal likelihood is computed on the unique inputs, their average
     targets with noise ``s^2 / n`` and the within-group scatter
     (:func:`log_likelihood`), in O(U^3) per step instead of O(N^3).
   * ``nuts``: numpyro NUTS over the hyperparameters, one run per output (the
     outputs are independent a posteriori), through the shared compiled
     runner of :mod:`priorguard.models._numpyro_util` (data are traced
     arguments, so a second fit of the same shapes compiles nothing);
     predictions mix over up to ``max_predictive_samples`` evenly thinned
     posterior draws; PyMC's divergence / R-hat / ESS warnings are emitted.
3. **Conditioning.** Cholesky of ``K + noise^2 I`` with escalating jitter
   (``1e-8 ... 1e-2`` of the mean diagonal); the jitter used is reported as
   :attr:`GPPosterior.jitter` and by a :class:`JitterWarning`; if even the
   largest fails, :class:`~priorguard.models._gpjax.GPNumericalError`.

4. **Function draws.** Pathwise conditioning (Wilson et al., 2020): a
   random-feature prior draw (features for every kernel family, see
   :mod:`priorguard.models._gpjax`) plus ``k(x, X) K^-1 (y - f(X) - eps)``,
   returned as :class:`~priorguard.models.base.FunctionDraws`.

The marginal likelihood's gradient is hand-written (one ``potrf`` plus one
inverse from the factor: LAPACK ``potri`` on CPU from N = 1024, XLA below; see
:func:`priorguard.models._gpjax.log_marginal_likelihood`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._shapes import shape_bucket
from priorguard.models import _gpjax as backend
from priorguard.models._gpjax import GPNumericalError, GPProgram
from priorguard.models._numpyro_util import (
    NutsProgram,
    SamplingWarning,
    cached_program,
    count_trace,
    warn_on_diagnostics,
)
from priorguard.models.base import Data, FunctionDraws, Prediction
from priorguard.priors.kernels import StructureSearch
from priorguard.priors.models import NOISE_FLOOR, GPModel, MapInference, NutsInference

__all__ = [
    "GPNumericalError",
    "GPPosterior",
    "JitterWarning",
    "SamplingWarning",
    "condition_gp",
    "fit_exact_gp",
    "fit_gp",
    "leave_one_state_out",
]

#: Box on unconstrained hyperparameters during L-BFGS-B (e^15 ~ 3e6).
UNCONSTRAINED_BOUND = 15.0


class JitterWarning(UserWarning):
    """A covariance matrix needed jitter on its diagonal to factorise."""


# --------------------------------------------------------------------------------------
# Inputs and targets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Prepared:
    """Training data in model units, with the transforms that produced it.

    Attributes:
        x: ``[N, D_model]`` inputs scaled to the unit cube.
        y: ``[N, O]`` standardised targets.
        columns: indices of ``data.x`` columns the model reads.
        low, scale: input transform, ``x_model = (x[:, columns] - low) / scale``.
        y_mean, y_scale: target transform, ``y_model = (y - y_mean) / y_scale``.
        feature_names: names of the model's columns; output_names: of the outputs.
        raw_x, raw_y: the data as given (``[N, D]``, ``[N, O]``).
    """

    x: np.ndarray
    y: np.ndarray
    columns: tuple[int, ...]
    low: np.ndarray
    scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    feature_names: tuple[str, ...]
    output_names: tuple[str, ...]
    raw_x: np.ndarray = field(repr=False)
    raw_y: np.ndarray = field(repr=False)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def num_outputs(self) -> int:
        return self.y.shape[1]

    @property
    def input_dim(self) -> int:
        return self.raw_x.shape[1]


def prepare_data(
    data: Data,
    *,
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    output_names: Sequence[str] | None = None,
    prior_mean: float | None = None,
) -> Prepared:
    """Validates data and applies the unit-cube and standardising transforms.

    Args:
        data: ``x [N, D]`` raw features, ``y [N, O]`` raw targets.
        feature_names: names of the ``D`` columns (default ``x0 ... x{D-1}``).
        features: the columns the model reads, by name (default all).
        feature_ranges: ``(low, high)`` per column of ``data.x`` (a sequence of
            ``D`` pairs) or a mapping from feature name to ``(low, high)``;
            None uses the training minimum and maximum.
        standardize: standardise targets per output.
        output_names: names of the ``O`` outputs (default ``y0 ...``).
        prior_mean: a fixed prior mean in the targets' units: targets are then
            centred on it (not on their average) and scaled by their root mean
            square about it, so a zero-mean GP in model units reverts to
            ``prior_mean`` away from the data.
    """
    x = np.asarray(data.x, dtype=np.float64)
    y = np.asarray(data.y, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("GP data must be finite: x or y holds NaN or inf")
    n, d_all = x.shape
    if n < 1:
        raise ValueError("GP data needs at least one point")
    names_all = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(d_all)]
    if len(names_all) != d_all:
        raise ValueError(f"feature_names has {len(names_all)} names but data.x has {d_all} columns")
    if features is not None:
        missing = [f for f in features if f not in names_all]
        if missing:
            raise ValueError(f"model features {missing} are not among the data's columns {names_all}")
        columns = tuple(names_all.index(f) for f in features)
    else:
        columns = tuple(range(d_all))
    model_names = tuple(names_all[c] for c in columns)
    xm = x[:, list(columns)]
    if feature_ranges is None:
        low, high = xm.min(axis=0), xm.max(axis=0)
        high = np.where(high > low, high, low + 1.0)
    elif isinstance(feature_ranges, Mapping):
        try:
            pairs = np.asarray([feature_ranges[nm] for nm in model_names], dtype=np.float64)
        except KeyError as err:
            raise ValueError(f"feature_ranges has no range for feature {err.args[0]!r}") from None
        low, high = pairs[:, 0], pairs[:, 1]
    else:
        pairs = np.asarray(feature_ranges, dtype=np.float64)
        if pairs.shape != (d_all, 2):
            raise ValueError(f"feature_ranges must be {d_all} (low, high) pairs, got shape {pairs.shape}")
        low, high = pairs[list(columns), 0], pairs[list(columns), 1]
    if not np.all(high > low):
        raise ValueError(f"feature_ranges need high > low; got low={low.tolist()}, high={high.tolist()}")
    scale = high - low
    if prior_mean is not None:
        y_mean = np.full(y.shape[1], float(prior_mean))
        y_scale = np.sqrt(np.mean((y - y_mean) ** 2, axis=0)) if standardize else np.ones(y.shape[1])
        y_scale = np.where(y_scale > 0, y_scale, 1.0)
    elif standardize:
        y_mean = y.mean(axis=0)
        y_scale = y.std(axis=0)
        y_scale = np.where(y_scale > 0, y_scale, 1.0)
    else:
        y_mean = np.zeros(y.shape[1])
        y_scale = np.ones(y.shape[1])
    outs = tuple(output_names) if output_names is not None else tuple(f"y{i}" for i in range(y.shape[1]))
    if len(outs) != y.shape[1]:
        raise ValueError(f"output_names has {len(outs)} names but y has {y.shape[1]} columns")
    return Prepared(
        x=(xm - low) / scale, y=(y - y_mean) / y_scale, columns=columns, low=low, scale=scale,
        y_mean=y_mean, y_scale=y_scale, feature_names=model_names, output_names=outs, raw_x=x, raw_y=y,
    )


# --------------------------------------------------------------------------------------
# The numpyro model and the compiled MAP objective
# --------------------------------------------------------------------------------------


def gp_model(program: GPProgram, x: Array | None = None, y: Array | None = None, *,
             mll: Any = backend.log_marginal_likelihood) -> dict[str, Array]:
    """The numpyro model of one output: hyperpriors, then ``log N(y | m, K + noise^2 I)``.

    Args:
        program: the resolved model.
        x: ``[N, D_model]`` scaled inputs (None: prior only).
        y: ``[N]`` standardised targets of one output, or their :class:`GroupedTargets`
            over the unique inputs ``x`` (None: prior only).
        mll: the marginal likelihood function (analytic or autodiff gradient).

    Returns:
        ``theta``: site name -> constrained value, fixed values included.
    """
    import numpyro

    theta: dict[str, Array] = {}
    for h in program.hypers:
        if h.fixed is not None:
            theta[h.site] = jnp.full(h.shape, h.fixed)
            continue
        dist = h.prior.to_numpyro(h.site)
        if h.shape:
            dist = dist.expand(h.shape).to_event(len(h.shape))
        theta[h.site] = _floored(program, h, numpyro.sample(h.site, dist))
    if y is not None:
        numpyro.factor(f"{program.site_prefix}/marginal_likelihood", log_likelihood(program, theta, x, y, mll=mll))
    return theta


class GroupedTargets(NamedTuple):
    """One output's targets summarised over repeated inputs (or ``O`` outputs on a last axis).

    Attributes:
        counts: ``[U]`` copies of each unique input (0 on padding rows).
        mean: ``[U]`` (or ``[U, O]``) average target at each unique input.
        scatter: ``[U]`` (or ``[U, O]``) sum of squared deviations from that average.
    """

    counts: Array
    mean: Array
    scatter: Array


def log_likelihood(program: GPProgram, theta: Mapping[str, Array], x: Array, y: Array | GroupedTargets, *,
                   mll: Any = backend.log_marginal_likelihood) -> Array:
    """``log N(y | m, K(X, X) + noise^2 I)`` of one output, from the targets or from their groups.

    With :class:`GroupedTargets` (``x`` the unique inputs) the value is the same
    number computed on U points instead of N. For ``n`` copies of an input with
    targets ``y_i`` (average ``ybar``, scatter ``S``) the noise factorises:
    ``prod_i N(y_i | f, s^2) = N(ybar | f, s^2 / n) (2 pi s^2)^(-(n-1)/2) n^(-1/2)
    exp(-S / (2 s^2))``, so the marginal likelihood is a GP on the averages with
    noise ``s^2 / n_u``, times the within-group terms. Padding rows
    (``counts = 0``) are made independent unit normals at 0 and their density
    is taken off again.
    """
    if not isinstance(y, GroupedTargets):
        return mll(backend.training_covariance(program, theta, x), y - backend.mean_value(program, theta))
    k, centred, within, present = _grouped_system(program, theta, x, y)
    return (mll(k, centred) + jnp.sum(jnp.where(present, within, 0.0))
            + 0.5 * math.log(2.0 * math.pi) * jnp.sum(~present))


def _grouped_system(program: GPProgram, theta: Mapping[str, Array], x: Array,
                    y: GroupedTargets) -> tuple[Array, Array, Array, Array]:
    """The GP on group averages (see :func:`log_likelihood`) of one output.

    Returns ``(K [U, U] with noise s^2 / n_u, centred averages [U], within-group
    log terms [U], present [U])``; padding rows are independent unit normals at 0.
    """
    present = y.counts > 0
    n = jnp.where(present, y.counts, 1.0)
    noise2 = theta[program.noise.site] ** 2
    k = backend.gram(program.kernel, theta, x, x, same=True) + jnp.diag(noise2 / n)
    k = jnp.where(present[:, None] & present[None, :], k, jnp.eye(k.shape[0], dtype=k.dtype))
    centred = jnp.where(present, y.mean - backend.mean_value(program, theta), 0.0)
    within = (-0.5 * (n - 1.0) * (math.log(2.0 * math.pi) + jnp.log(noise2)) - 0.5 * jnp.log(n)
              - y.scatter / (2.0 * noise2))
    return k, centred, within, present


#: Group repeated inputs when the padded number of unique inputs is at most this fraction of N.
GROUP_FRACTION = 0.75


def _has_white(tree: backend.KernelTree) -> bool:
    if isinstance(tree, backend.KernelNode):
        return any(_has_white(t) for t in tree.terms)
    return tree.kind == "white"


def group_repeated_inputs(program: GPProgram, x: np.ndarray, y: np.ndarray, *,
                          always: bool = False) -> tuple[np.ndarray, GroupedTargets] | None:
    """The data as unique inputs and :class:`GroupedTargets`, or None when grouping does not pay.

    The unique inputs are padded (with copies of the first, ``counts = 0``) to a
    shape bucket, so fits with a few more or fewer unique inputs share compiled
    code. Kernels with a white-noise term are never grouped: white noise is
    independent per observation, not per input, so it does not act on groups.

    Args:
        program: the model (its kernel decides whether grouping is exact).
        x: ``[N, D]`` model inputs.
        y: ``[N, O]`` model targets.
        always: group even when it does not pay (for scores per unique input).

    Returns:
        ``(x_unique [U', D], GroupedTargets with [U'] counts and [U', O] mean and scatter)``.
    """
    if _has_white(program.kernel):
        return None
    uniq, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    u = uniq.shape[0]
    size = shape_bucket(u, direction="up")
    if size > GROUP_FRACTION * x.shape[0] and not always:
        return None
    inverse = inverse.reshape(-1)
    n = np.zeros(size)
    n[:u] = counts
    sums = np.zeros((size, y.shape[1]))
    np.add.at(sums, inverse, y)
    mean = sums / np.maximum(n, 1.0)[:, None]
    scatter = np.zeros_like(sums)
    np.add.at(scatter, inverse, (y - mean[inverse]) ** 2)
    x_unique = np.concatenate([uniq, np.repeat(uniq[:1], size - u, axis=0)])
    return x_unique, GroupedTargets(n, mean, scatter)


def theta_from_sites(program: GPProgram, values: Mapping[str, Array], lead: tuple[int, ...]) -> dict[str, Array]:
    """Kernel/noise/mean values from sampled sites, fixed ones broadcast to ``lead``.

    A learned noise comes out floored (``sqrt(noise^2 + noise_floor^2)``): ``theta``
    holds the noise the likelihood uses, the sites what the prior is on.
    """
    out = {}
    for h in program.hypers:
        if h.fixed is not None:
            out[h.site] = jnp.full((*lead, *h.shape), h.fixed)
        else:
            out[h.site] = _floored(program, h, jnp.asarray(values[h.site]))
    return out


def _floored(program: GPProgram, h: Any, value: Array) -> Array:
    # The floor keeps a learned noise off zero. Labels of a deterministic rater repeat
    # exactly at revisited states, so the likelihood grows without bound as the noise
    # shrinks, and MAP can end in a look-up table: a lengthscale near 0 on one feature,
    # near e^15 on the others, a variance of 3e5 (lava-shift, one seed in three).
    if program.noise_floor > 0 and h.site == program.noise.site:
        return jnp.sqrt(value * value + program.noise_floor**2)
    return value


def latent_site_shapes(program: GPProgram) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Every free sample site (hyperpriors included): name -> (shape, support)."""
    from numpyro.handlers import seed, trace

    out: dict[str, tuple[tuple[int, ...], Any]] = {}

    def shapes() -> None:
        tr = trace(seed(functools.partial(gp_model, program), 0)).get_trace()
        out.update({name: (tuple(site["fn"].shape()), site["fn"].support)
                    for name, site in tr.items() if site["type"] == "sample" and not site["is_observed"]})

    jax.eval_shape(shapes)  # traced abstractly: the prior draws are never computed
    return out


def initial_unconstrained(program: GPProgram, key: PRNGKeyArray, num_outputs: int, *,
                          strategy: str) -> dict[str, np.ndarray]:
    """A starting point ``{site: [O, ...]}`` in unconstrained space.

    ``strategy="median"``: numpyro's ``init_to_median`` (101 prior samples);
    ``"uniform"``: numpyro's ``init_to_uniform(radius=2)``.
    """
    if strategy not in ("median", "uniform"):
        raise ValueError(f'strategy must be "median" or "uniform", got {strategy!r}')
    program = program.anonymous()  # feature names do not change the draws
    init = cached_program(("gp/initial_unconstrained", program, num_outputs, strategy),
                          lambda: jax.jit(functools.partial(_initial_unconstrained, program, num_outputs, strategy)))
    return {name: np.asarray(v) for name, v in init(key).items()}


def _initial_unconstrained(program: GPProgram, num_outputs: int, strategy: str, key: PRNGKeyArray) -> dict[str, Array]:
    from numpyro.distributions.transforms import biject_to
    from numpyro.handlers import seed, substitute, trace
    from numpyro.infer.initialization import init_to_median, init_to_uniform

    init = init_to_median(num_samples=101) if strategy == "median" else init_to_uniform(radius=2.0)
    model = functools.partial(gp_model, program)
    per_output: list[dict[str, Array]] = []
    for k in jax.random.split(key, num_outputs):
        tr = trace(substitute(seed(model, k), substitute_fn=init)).get_trace()
        per_output.append({
            name: biject_to(site["fn"].support).inv(site["value"])
            for name, site in tr.items() if site["type"] == "sample" and not site["is_observed"]
        })
    if not per_output[0]:
        return {}
    return {name: jnp.stack([p[name] for p in per_output]) for name in per_output[0]}


class MapObjective:
    """Compiled negative log joint (or negative log marginal likelihood) of O outputs.

    Built once per ``(program, num_outputs, use_prior, analytic)`` through
    :func:`map_objective`; JAX's jit cache then keys on ``(N, D)``, so a later
    fit with the same shapes compiles nothing (the traced body calls
    ``count_trace("gp/map_objective")``).

    Attributes:
        value_and_grad: ``(u_flat [P], x [N, D], y [N, O]) -> (value, grad [P])``; or
            ``x [U, D]`` unique inputs with ``y`` their :class:`GroupedTargets` (the same value).
        value: the same without gradient.
        constrain: ``u_flat -> {site: [O, ...]}`` constrained values of all sample sites.
        unravel: ``u_flat -> {site: [O, ...]}`` unconstrained.
    """

    def __init__(self, program: GPProgram, num_outputs: int, *, use_prior: bool, analytic: bool = True) -> None:
        from numpyro.infer.util import constrain_fn, potential_energy

        self.program = program
        self.num_outputs = num_outputs
        self.use_prior = use_prior
        self.sites = latent_site_shapes(program)
        template = {name: np.zeros((num_outputs, *shape)) for name, (shape, _) in self.sites.items()}
        flat, self.unravel = ravel_pytree(template)
        self.size = int(flat.shape[0])
        mll = backend.log_marginal_likelihood if analytic else backend.log_marginal_likelihood_autodiff
        model = functools.partial(gp_model, program, mll=mll)

        def single(u: dict[str, Array], x: Array, y: Array) -> Array:
            if use_prior:
                return potential_energy(model, (x, y), {}, u)
            values = constrain_fn(model, (None, None), {}, u)
            theta = theta_from_sites(program, values, ())
            return -log_likelihood(program, theta, x, y, mll=mll)

        def total(u_flat: Array, x: Array, y: Array | GroupedTargets) -> Array:
            count_trace("gp/map_objective")
            u = self.unravel(u_flat)
            if isinstance(y, GroupedTargets):  # x holds the unique inputs
                def one(uo: Any, mean: Array, scatter: Array) -> Array:
                    return single(uo, x, GroupedTargets(y.counts, mean, scatter))

                return jnp.sum(backend.map_unbatched(one, u, y.mean.T, y.scatter.T))
            return jnp.sum(backend.map_unbatched(lambda uo, yo: single(uo, x, yo), u, y.T))

        def constrain(u_flat: Array) -> dict[str, Array]:
            return jax.vmap(lambda u: constrain_fn(model, (None, None), {}, u))(self.unravel(u_flat))

        self.total = total
        self.value_and_grad = jax.jit(jax.value_and_grad(total))
        self.value = jax.jit(total)
        self.constrain = jax.jit(constrain)
        self._adam: dict[tuple[int, float], Any] = {}

    def adam(self, steps: int, learning_rate: float) -> Any:
        """A compiled ``(u0_flat, x, y) -> (u_flat, values [steps])`` Adam run."""
        key = (steps, learning_rate)
        if key not in self._adam:
            import optax

            opt = optax.adam(learning_rate)
            vg = jax.value_and_grad(self.total)

            def run(u0: Array, x: Array, y: Array) -> tuple[Array, Array]:
                def step(carry: Any, _: Any) -> tuple[Any, Array]:
                    u, state = carry
                    value, grad = vg(u, x, y)
                    grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
                    updates, state = opt.update(grad, state, u)
                    u = jnp.clip(optax.apply_updates(u, updates), -UNCONSTRAINED_BOUND, UNCONSTRAINED_BOUND)
                    return (u, state), value

                (u, _), values = jax.lax.scan(step, (u0, opt.init(u0)), None, length=steps)
                return u, values

            self._adam[key] = jax.jit(run)
        return self._adam[key]


def map_objective(program: GPProgram, num_outputs: int, *, use_prior: bool = True,
                  analytic: bool = True) -> MapObjective:
    """The cached :class:`MapObjective` of a program (shared by programs that differ only in feature names)."""
    program = program.anonymous()
    return cached_program(("gp/map_objective", program, num_outputs, use_prior, analytic),
                          lambda: MapObjective(program, num_outputs, use_prior=use_prior, analytic=analytic))


def _scipy_lbfgs(objective: MapObjective, u0: np.ndarray, x: Array, y: Array,
                 steps: int) -> tuple[np.ndarray, float, int]:
    from scipy.optimize import minimize

    evals = 0

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evals
        evals += 1
        value, grad = objective.value_and_grad(jnp.asarray(u), x, y)
        value = float(value)
        grad = np.asarray(grad, dtype=np.float64)
        if not (math.isfinite(value) and np.all(np.isfinite(grad))):
            return 1e30, np.zeros_like(u)
        return value, grad

    bounds = [(-UNCONSTRAINED_BOUND, UNCONSTRAINED_BOUND)] * u0.shape[0]
    res = minimize(fun, np.clip(u0, -UNCONSTRAINED_BOUND, UNCONSTRAINED_BOUND), jac=True, method="L-BFGS-B",
                   bounds=bounds, options={"maxiter": steps, "maxfun": 4 * steps + 20})
    return np.asarray(res.x), float(res.fun), evals


@dataclass(frozen=True)
class MapResult:
    """The best MAP run: unconstrained point, objective value, all restarts' values."""

    u_flat: np.ndarray
    value: float
    values: tuple[float, ...]
    evaluations: int


def fit_map(program: GPProgram, prep: Prepared, inference: MapInference, *, key: PRNGKeyArray,
            use_prior: bool = True, init: Mapping[str, Any] | None = None) -> MapResult:
    """Minimises the negative log joint (``use_prior=False``: negative log marginal likelihood).

    Restart 0 starts at the prior median (or ``init``: ``{site: [O, ...]}``
    unconstrained), later restarts at numpyro's ``init_to_uniform``.
    """
    objective = map_objective(program, prep.num_outputs, use_prior=use_prior)
    grouped = group_repeated_inputs(program, prep.x, prep.y)
    if grouped is None:
        x, y = jnp.asarray(prep.x), jnp.asarray(prep.y)
    else:  # the same objective on the unique inputs (discrete environments revisit few states)
        x, y = jnp.asarray(grouped[0]), GroupedTargets(*(jnp.asarray(a) for a in grouped[1]))
    if objective.size == 0:
        return MapResult(np.zeros(0), float(objective.value(jnp.zeros(0), x, y)), (), 1)
    keys = jax.random.split(key, inference.restarts)
    best: tuple[np.ndarray, float] | None = None
    values, evals = [], 0
    for r, k in enumerate(keys):
        if r == 0 and init is not None:
            start = {name: np.asarray(init[name], dtype=np.float64).reshape((prep.num_outputs, *shape))
                     for name, (shape, _) in objective.sites.items()}
        else:
            start = initial_unconstrained(program, k, prep.num_outputs, strategy="median" if r == 0 else "uniform")
        u0 = np.asarray(ravel_pytree(start)[0], dtype=np.float64)
        if inference.optimizer == "lbfgs":
            u, value, n_eval = _scipy_lbfgs(objective, u0, x, y, inference.steps)
        else:
            u_j, _ = objective.adam(inference.steps, inference.learning_rate)(jnp.asarray(u0), x, y)
            u = np.asarray(u_j)
            value, n_eval = float(objective.value(u_j, x, y)), inference.steps
        evals += n_eval
        values.append(value)
        if math.isfinite(value) and (best is None or value < best[1]):
            best = (u, value)
    if best is None:
        raise GPNumericalError(
            f"MAP fit of {program.describe()} failed: the objective was not finite at any of"
            f" {inference.restarts} starting points"
        )
    return MapResult(best[0], best[1], tuple(values), evals)


# --------------------------------------------------------------------------------------
# Conditioning: Cholesky factors of every (sample, output)
# --------------------------------------------------------------------------------------


def _conditioner(program: GPProgram) -> Any:
    program = program.anonymous()  # feature names do not change the computation

    def build() -> Any:
        def one(theta: Mapping[str, Array], x: Array, y: Array) -> tuple[Array, Array, Array]:
            count_trace("gp/condition")
            k = backend.training_covariance(program, theta, x)
            chol, jitter = backend.cholesky_with_jitter(k)
            alpha = jax.scipy.linalg.cho_solve((chol, True), y - backend.mean_value(program, theta))
            return chol, alpha, jitter

        def run(theta: Mapping[str, Array], x: Array, y: Array) -> tuple[Array, Array, Array]:
            flat, s, o = _flat_draws(program, theta)
            out = backend.map_unbatched(lambda th, yy: one(th, x, yy), flat, jnp.tile(y.T, (s, 1)))
            return jax.tree_util.tree_map(lambda a: a.reshape(s, o, *a.shape[1:]), out)

        return jax.jit(run)

    return cached_program(("gp/condition", program), build)


def condition(program: GPProgram, theta: Mapping[str, Array], prep: Prepared, *,
              stacklevel: int = 3) -> tuple[Array, Array, Array]:
    """Factorises ``K + noise^2 I`` for every sample and output (``theta`` leaves ``[S, O, ...]``).

    Returns:
        ``chol [S, O, N, N]``, ``alpha [S, O, N]``, ``jitter [S, O]``.

    Raises:
        GPNumericalError: the matrix stayed indefinite at the largest jitter.
    """
    chol, alpha, jitter = _conditioner(program)(dict(theta), jnp.asarray(prep.x), jnp.asarray(prep.y))
    diag_ok = np.asarray(jnp.all(jnp.isfinite(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1))
    if not diag_ok.all():
        bad = np.argwhere(~diag_ok)[0]
        values = {s: np.asarray(v[tuple(bad)]).round(6).tolist() for s, v in theta.items()}
        raise GPNumericalError(
            f"the covariance of {program.describe()} (output {int(bad[1])}) is not positive definite even with"
            f" jitter {backend.JITTER_LEVELS[-1]:g} x mean diagonal added; hyperparameters: {values}. Check for"
            " duplicated inputs with a tiny noise floor, or a fixed noise of 0."
        )
    jit_np = np.asarray(jitter)
    if np.any(jit_np > 0):
        warnings.warn(
            f"GP covariance of {program.describe()} needed jitter {jit_np.max():.3g} on its diagonal"
            f" ({int(np.sum(jit_np > 0))} of {jit_np.size} sample/output factors) to factorise;"
            " inputs are nearly duplicated or the noise is tiny.",
            JitterWarning, stacklevel=stacklevel,
        )
    return chol, alpha, jitter


# --------------------------------------------------------------------------------------
# The posterior
# --------------------------------------------------------------------------------------


class ExactGPState(eqx.Module):
    """Arrays of a fitted exact GP (a pytree; the program is static).

    ``theta`` leaves are ``[S, O, ...]`` in model units (standardised targets,
    unit-cube inputs).
    """

    program: GPProgram = eqx.field(static=True)
    columns: tuple[int, ...] = eqx.field(static=True)
    x: Float[Array, "N Dm"]
    y: Float[Array, "N O"]
    theta: dict[str, Array]
    chol: Float[Array, "S O N N"]
    alpha: Float[Array, "S O N"]
    weights: Float[Array, " S"]
    low: Float[Array, " Dm"]
    scale: Float[Array, " Dm"]
    y_mean: Float[Array, " O"]
    y_scale: Float[Array, " O"]

    def model_inputs(self, x: Float[Array, "M D"]) -> Float[Array, "M Dm"]:
        x = jnp.asarray(x, dtype=self.x.dtype)
        return (x[:, jnp.asarray(self.columns)] - self.low) / self.scale


def _latent_moments(program: GPProgram, theta: Mapping[str, Array], chol: Array, alpha: Array, x_train: Array,
                    xs: Array) -> tuple[Array, Array, Array]:
    """Latent mean, latent variance and noise variance ``[M]`` of one sample and output."""
    kernel = program.kernel
    kxs = backend.gram(kernel, theta, x_train, xs, same=False)
    mean = kxs.T @ alpha + backend.mean_value(program, theta)
    v = jax.scipy.linalg.solve_triangular(chol, kxs, lower=True)
    prior_var = backend.gram_diag(kernel, theta, xs, white=False)
    var = jnp.maximum(prior_var - jnp.sum(v * v, axis=0), 0.0)
    noise = theta[program.noise.site] ** 2 * jnp.ones_like(mean)
    if backend.has_white(kernel):
        noise = noise + backend.gram_diag(kernel, theta, xs, white=True) - prior_var
    return mean, var, noise


@jax.jit
def _exact_components(state: ExactGPState, x: Array) -> tuple[Array, Array, Array]:
    """Per-sample moments in raw units, each ``[S, M, O]``."""
    count_trace("gp/predict")
    xs = state.model_inputs(x)

    def one(theta: Any, chol: Array, alpha: Array) -> tuple[Array, Array, Array]:
        return _latent_moments(state.program, theta, chol, alpha, state.x, xs)

    s, o = state.alpha.shape[:2]
    flat = jax.tree_util.tree_map(lambda a: a.reshape(s * o, *a.shape[2:]), (state.theta, state.chol, state.alpha))
    out = backend.map_unbatched(one, *flat)  # each [S * O, M]
    mean, var, noise = (jnp.swapaxes(a.reshape(s, o, -1), 1, 2) for a in out)
    return mean * state.y_scale + state.y_mean, var * state.y_scale**2, noise * state.y_scale**2


def mixture_moments(weights: Array, mean: Array, var: Array, noise: Array) -> Prediction:
    """Moments of a mixture over the leading axis (law of total variance)."""
    w = weights[:, None, None]
    m = jnp.sum(w * mean, axis=0)
    epi = jnp.sum(w * (var + (mean - m) ** 2), axis=0)
    return Prediction(mean=m, epistemic_var=epi, aleatoric_var=jnp.sum(w * noise, axis=0))


def mixture_log_density(log_weights: Array, mean: Array, var: Array, y: Array) -> Array:
    """``log sum_s w_s prod_o N(y_o | mean_so, var_so)`` ``[M]``; components ``[S, M, O]``."""
    lp = -0.5 * (jnp.log(2 * jnp.pi * var) + (y[None] - mean) ** 2 / var)
    return jax.scipy.special.logsumexp(log_weights[:, None] + jnp.sum(lp, axis=-1), axis=0)


@functools.partial(jax.jit, static_argnames=("n", "per_block", "batch"))
def _exact_draw_params(state: ExactGPState, key: PRNGKeyArray, n: int, per_block: int, batch: int) -> dict[str, Any]:
    """Pathwise-conditioning parameters of ``n`` draws (leaves ``[n, O, ...]``)."""
    count_trace("gp/draws")
    program, kernel = state.program, state.program.kernel
    k_idx, k_draw = jax.random.split(key)
    num_samples, num_outputs = state.alpha.shape[:2]
    idx = jax.random.choice(k_idx, num_samples, (n,), p=state.weights)
    keys = jax.random.split(k_draw, (n, num_outputs))
    feats = backend.num_features(kernel, per_block)

    def prior_part(theta: Any, y: Array, k: PRNGKeyArray) -> dict[str, Any]:
        kf, kw, ke = jax.random.split(k, 3)
        fparams = backend.sample_features(kernel, theta, kf, per_block)
        w = jax.random.normal(kw, (feats,), dtype=state.x.dtype)
        f_train = backend.eval_features(kernel, theta, fparams, state.x, per_block) @ w
        noise_var = theta[program.noise.site] ** 2
        if backend.has_white(kernel):
            noise_var = noise_var + backend.gram_diag(kernel, theta, state.x, white=True) - backend.gram_diag(
                kernel, theta, state.x, white=False)
        eps = jnp.sqrt(noise_var) * jax.random.normal(ke, y.shape, dtype=state.x.dtype)
        resid = y - backend.mean_value(program, theta) - f_train - eps
        return {"theta": theta, "features": fparams, "w": w, "resid": resid}

    def draw(args: tuple[Array, Array]) -> dict[str, Any]:
        i, k = args
        theta = jax.tree_util.tree_map(lambda a: a[i], state.theta)
        return jax.vmap(prior_part)(theta, state.y.T, k)

    # vmap over draws in chunks of `batch` (padded, so no separate remainder program)
    chunks = -(-n // batch)
    pad = chunks * batch - n
    idx_p = jnp.concatenate([idx, jnp.zeros(pad, idx.dtype)])
    keys_p = jnp.concatenate([keys, keys[:pad]]) if pad else keys
    per_chunk = jax.vmap(draw)
    if chunks == 1:
        parts = per_chunk((idx_p, keys_p))
    else:
        parts = jax.lax.map(per_chunk, (idx_p.reshape(chunks, batch), keys_p.reshape(chunks, batch, -1)))
        parts = jax.tree_util.tree_map(lambda a: a.reshape(chunks * batch, *a.shape[2:]), parts)
    parts = jax.tree_util.tree_map(lambda a: a[:n], parts)
    resid = parts.pop("resid")  # [n, O, N]

    def solve(chol: Array, r: Array) -> Array:
        return jax.scipy.linalg.cho_solve((chol, True), r)

    if num_samples == 1:  # one factor per output, all draws as right-hand sides
        v = backend.map_unbatched(lambda c, r: solve(c, r.T).T, state.chol[0], jnp.swapaxes(resid, 0, 1))
        parts["v"] = jnp.swapaxes(v, 0, 1)
    else:
        parts["v"] = jax.lax.map(lambda a: backend.map_unbatched(solve, state.chol[a[0]], a[1]), (idx, resid))
    return parts


@dataclass(frozen=True)
class ExactDrawFn:
    """``apply_fn`` of exact- and sparse-GP draws: prior features plus the canonical-basis update.

    ``f(x) = phi(x) w + k(x, X) v + m`` per output, then back to raw units.
    Everything data-dependent (the basis inputs ``X``, input scaling, output
    scaling) lives in the draw parameters under ``"basis"``, so this function
    is a small value (hashable and compared by value): planners jitted with
    the draws as *arguments* compile once per kernel structure and shapes,
    not once per fit.
    """

    program: GPProgram
    per_block: int
    columns: tuple[int, ...]

    def __call__(self, params: Mapping[str, Any], x: Float[Array, "M D"]) -> Float[Array, "M O"]:
        return _apply_exact(self.program, self.per_block, self.columns, params, x)


def basis_params(n: int, x_fit: Array, low: Array, scale: Array, y_mean: Array, y_scale: Array) -> dict[str, Array]:
    """The ``"basis"`` entry of draw parameters: the same data repeated for each of ``n`` draws.

    ``x_fit`` is ``[N, D]`` (exact GP: training inputs shared by all outputs)
    or ``[O, M, D]`` (sparse GP: inducing inputs per output).
    """
    leaves = {"x_fit": x_fit, "low": low, "scale": scale, "y_mean": y_mean, "y_scale": y_scale}
    return {k: jnp.broadcast_to(jnp.asarray(v), (n, *jnp.shape(v))) for k, v in leaves.items()}


def collapse_duplicate_inputs(x: np.ndarray, v: Array) -> tuple[np.ndarray, Array]:
    """Merges repeated training inputs of the update term ``k(x, X) v`` (exactly).

    ``sum_i k(x, X_i) v_i`` over rows with equal ``X_i`` is ``k(x, X_u) sum v_i``,
    so the basis shrinks to the unique rows (padded with zero-weight copies to
    a shape bucket, so fits with a few more or fewer unique inputs share
    compiled code). On discrete environments T and I are fitted on thousands
    of visits to a few dozen states; this makes every planner evaluation of a
    draw cost O(unique states) instead of O(N).

    Args:
        x: ``[N, D]`` standardised training inputs.
        v: ``[S, O, N]`` update weights.

    Returns:
        ``(x_basis [U', D], v [S, O, U'])`` with ``U' >= U``; unchanged when
        fewer than a quarter of the rows are repeats.
    """
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    u = uniq.shape[0]
    size = shape_bucket(u, direction="up", per_octave=2, exact_below=0)
    if size > 0.75 * x.shape[0]:
        return x, v
    x_basis = np.concatenate([uniq, np.repeat(uniq[:1], size - u, axis=0)])  # padding rows carry v = 0
    return x_basis, _sum_duplicates(v, jnp.asarray(inverse.reshape(-1)), size)


@functools.partial(jax.jit, static_argnums=2)
def _sum_duplicates(v: Array, inverse: Array, size: int) -> Array:
    """``v [S, O, N]`` summed over rows with the same ``inverse`` index: ``[S, O, size]``."""
    return jnp.moveaxis(jax.ops.segment_sum(jnp.moveaxis(v, -1, 0), inverse, num_segments=size), 0, -1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _apply_exact(program: GPProgram, per_block: int, columns: tuple[int, ...], params: Mapping[str, Any],
                 x: Array) -> Array:
    basis = params["basis"]
    x_fit = basis["x_fit"]
    xs = (jnp.asarray(x, dtype=x_fit.dtype)[:, jnp.asarray(columns)] - basis["low"]) / basis["scale"]
    kernel = program.kernel
    per_output = {k: v for k, v in params.items() if k != "basis"}

    def one(p: Mapping[str, Any], xf: Array) -> Array:
        f = backend.eval_features(kernel, p["theta"], p["features"], xs, per_block) @ p["w"]
        f = f + backend.gram(kernel, p["theta"], xs, xf, same=False) @ p["v"]
        return f + backend.mean_value(program, p["theta"])

    if x_fit.ndim == 2:  # exact GP: basis inputs shared by all outputs
        out = jax.vmap(one, in_axes=(0, None), out_axes=1)(per_output, x_fit)
    else:  # sparse GP: inducing inputs per output [O, M, D]
        out = jax.vmap(one, in_axes=(0, 0), out_axes=1)(per_output, x_fit)
    return out * basis["y_scale"] + basis["y_mean"]


@dataclass(frozen=True, eq=False)
class FitRecord:
    """What a fit leaves for ``to_datatree`` and reports (identity-hashed)."""

    method: str
    samples: dict[str, np.ndarray]  # site -> [C, S, O, ...] constrained, every free site
    log_joint: np.ndarray  # [C, S]
    sample_stats: dict[str, np.ndarray] | None = None  # NUTS: [C, S]
    diagnostics: dict[str, float] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    key: Any = None


class GPPosterior(eqx.Module):
    """A fitted exact GP (MAP, NUTS or fixed hyperparameters); a :class:`~priorguard.models.base.Posterior`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from priorguard.models.base import as_data
        >>> from priorguard.priors.kernels import StationaryKernel
        >>> x = jnp.linspace(0.0, 1.0, 8)[:, None]
        >>> post = condition_gp(StationaryKernel(kind="rbf", lengthscale=0.3, variance=1.0),
        ...                     as_data(x, jnp.sin(6 * x)), noise=0.1, standardize=False,
        ...                     feature_ranges=[(0.0, 1.0)])
        >>> post.predict(x).mean.shape
        (8, 1)
        >>> post.sample_functions(jax.random.key(0), 3)(x).shape
        (3, 8, 1)
    """

    state: ExactGPState
    prep: Prepared = eqx.field(static=True)
    record: FitRecord = eqx.field(static=True)

    # -- Posterior protocol ---------------------------------------------------------
    @property
    def input_dim(self) -> int:
        return self.prep.input_dim

    @property
    def output_dim(self) -> int:
        return self.prep.num_outputs

    def predict(self, x: Float[Array, "M D"]) -> Prediction:
        """Predictive moments at ``x`` (raw units), mixed over hyperparameter samples.

        Args:
            x: ``[M, D]`` inputs with the same columns as the training ``data.x``.

        Returns:
            :class:`~priorguard.models.base.Prediction` with ``[M, O]`` fields.
        """
        mean, var, noise = _exact_components(self.state, x)
        return mixture_moments(self.state.weights, mean, var, noise)

    def sample_moments(self, x: Float[Array, "M D"]) -> tuple[Array, Array, Array]:
        """Per-hyperparameter-sample latent mean, latent variance and noise variance, each ``[S, M, O]``."""
        return _exact_components(self.state, x)

    def log_predictive_density(self, x: Float[Array, "M D"], y: Float[Array, "M O"]) -> Float[Array, " M"]:
        """``log p(y_i | x_i, data)`` summed over outputs, mixed over hyperparameter samples."""
        mean, var, noise = _exact_components(self.state, x)
        y = jnp.asarray(y, dtype=mean.dtype).reshape(mean.shape[1:])
        return mixture_log_density(jnp.log(self.state.weights), mean, var + noise, y)

    def sample_functions(self, key: PRNGKeyArray, n: int, *, num_features: int = 512) -> FunctionDraws:
        """``n`` pathwise posterior draws (Wilson et al., 2020), callable at any input.

        Each draw picks a hyperparameter sample (by weight), draws a prior
        function from random features (see :mod:`priorguard.models._gpjax`) and
        adds ``k(x, X) K^-1 (y - f_prior(X) - eps)``.

        Args:
            key: consumed.
            n: number of draws ``S``.
            num_features: random features per top-level kernel term.
        """
        st = self.state
        # draws are made in chunks of at most ~2e7 feature evaluations, spread evenly
        # (100 draws in chunks of at most 76 are 2 x 50, not 2 x 76 with 52 padded)
        cap = max(1, min(n, int(2e7 // max(1, st.x.shape[0] * num_features * st.y.shape[1]))))
        chunks = -(-n // cap)
        batch = -(-n // chunks)
        params = _exact_draw_params(st, key, n, num_features, batch)
        x_basis, params["v"] = collapse_duplicate_inputs(np.asarray(st.x), params["v"])
        params["basis"] = basis_params(n, jnp.asarray(x_basis), st.low, st.scale, st.y_mean, st.y_scale)
        return FunctionDraws(params=params, apply_fn=ExactDrawFn(st.program.anonymous(), num_features, st.columns))

    def to_datatree(self) -> Any:
        """ArviZ ``xarray.DataTree``; see :func:`exact_datatree`."""
        return exact_datatree(self)

    # -- extras ---------------------------------------------------------------------
    @property
    def jitter(self) -> float:
        """Largest absolute jitter added to a training covariance diagonal (model units)."""
        return float(self.record.optimizer.get("jitter_max", 0.0))

    @property
    def program(self) -> GPProgram:
        return self.state.program

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def hyperparameters(self) -> dict[str, np.ndarray]:
        """Constrained samples of every free site, ``[C, S, O, ...]`` (model units)."""
        return dict(self.record.samples)

    def map_hyperparameters(self) -> dict[str, np.ndarray]:
        """Kernel, noise and mean values of the first (for MAP: only) sample, ``[O, ...]``."""
        return {k: np.asarray(v[0]) for k, v in self.state.theta.items()}

    @property
    def log_joint(self) -> float:
        """Log joint (MAP: at the mode, in unconstrained space; NUTS: mean over draws)."""
        return float(np.mean(self.record.log_joint))

    def loo_log_density(self) -> Float[Array, "S N"]:
        """Exact leave-one-out ``log p(y_i | y_-i, theta_s)`` per used sample (raw units)."""
        return _exact_loo(self.state)


def _exact_loo_one(chol: Array, alpha: Array) -> tuple[Array, Array]:
    n = chol.shape[-1]
    linv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(n, dtype=chol.dtype), lower=True)
    kinv_diag = jnp.sum(linv * linv, axis=0)
    return alpha / kinv_diag, 1.0 / kinv_diag  # residual y_i - mu_-i, and its variance


def _loo_log_density(resid: Array, var: Array, y_scale: Array) -> Array:
    """``[..., O, N]`` residuals and variances (model units) -> ``[..., N]`` raw-unit log densities."""
    ys = y_scale[:, None]
    return jnp.sum(-0.5 * (jnp.log(2 * jnp.pi * var * ys**2) + resid**2 / var), axis=-2)


@jax.jit
def _exact_loo(state: ExactGPState) -> Array:
    count_trace("gp/loo")
    s, o, n = state.alpha.shape
    resid, var = backend.map_unbatched(_exact_loo_one, state.chol.reshape(s * o, n, n), state.alpha.reshape(s * o, n))
    return _loo_log_density(resid.reshape(s, o, n), var.reshape(s, o, n), state.y_scale)


def _loo_from_theta(program: GPProgram) -> Any:
    """Compiled ``(theta [K, O, ...], x, y) -> [K, N]`` exact LOO log densities (no factor kept)."""
    program = program.anonymous()  # feature names do not change the computation

    def build() -> Any:
        def one(theta: Mapping[str, Array], x: Array, y: Array) -> tuple[Array, Array]:
            k = backend.training_covariance(program, theta, x)
            chol, _ = backend.cholesky_with_jitter(k)
            alpha = jax.scipy.linalg.cho_solve((chol, True), y - backend.mean_value(program, theta))
            return _exact_loo_one(chol, alpha)

        def run(theta: Mapping[str, Array], x: Array, y: Array, y_scale: Array) -> Array:
            count_trace("gp/loo_samples")
            flat, s, o = _flat_draws(program, theta)
            resid, var = backend.map_unbatched(lambda th, yy: one(th, x, yy), flat, jnp.tile(y.T, (s, 1)))
            n = x.shape[0]
            return _loo_log_density(resid.reshape(s, o, n), var.reshape(s, o, n), y_scale)

        return jax.jit(run)

    return cached_program(("gp/loo_samples", program), build)


def _flat_draws(program: GPProgram, theta: Mapping[str, Array]) -> tuple[dict[str, Array], int, int]:
    """``theta`` leaves ``[K, O, ...]`` flattened to ``[K * O, ...]``, with K and O."""
    k, o = theta[program.noise.site].shape[:2]
    return jax.tree_util.tree_map(lambda a: a.reshape(k * o, *a.shape[2:]), dict(theta)), k, o


def _loso_one(program: GPProgram, theta: Mapping[str, Array], xu: Array, y: GroupedTargets) -> tuple[Array, Array]:
    """Leave-one-state-out log densities of one sample and output (model units), ``([U], [U])``.

    The GP on the group averages (:func:`_grouped_system`) gives, by the exact
    LOO identities, the mean and variance of ``ybar_u`` given every other unique
    input's targets. Returns the log density of ``ybar_u`` and that of all the
    group's targets (the first plus the within-group term); 0 on padding rows.
    """
    k, centred, within, present = _grouped_system(program, theta, xu, y)
    chol, _ = backend.cholesky_with_jitter(k)
    resid, var = _exact_loo_one(chol, jax.scipy.linalg.cho_solve((chol, True), centred))
    lp_mean = -0.5 * (jnp.log(2 * jnp.pi * var) + resid**2 / var)
    return jnp.where(present, lp_mean, 0.0), jnp.where(present, lp_mean + within, 0.0)


def _loso_from_theta(program: GPProgram) -> Any:
    """Compiled ``(theta [K, O, ...], x_unique, counts, mean, scatter, y_scale) -> ([K, U], [K, U])``."""
    program = program.anonymous()

    def build() -> Any:
        def run(theta: Mapping[str, Array], xu: Array, counts: Array, ybar: Array, scatter: Array,
                y_scale: Array) -> tuple[Array, Array]:
            count_trace("gp/loso")
            flat, k, o = _flat_draws(program, theta)
            lp_mean, lp_group = backend.map_unbatched(
                lambda th, yb, sc: _loso_one(program, th, xu, GroupedTargets(counts, yb, sc)), flat,
                jnp.tile(ybar.T, (k, 1)), jnp.tile(scatter.T, (k, 1)))
            # ybar_u's density in raw units; the group's (importance weights only) stays in model
            # units: the Jacobian is the same for every draw and cancels when the weights are normalised
            lp_mean = lp_mean.reshape(k, o, -1) - jnp.log(y_scale)[None, :, None]
            return jnp.sum(lp_mean, axis=1), jnp.sum(lp_group.reshape(k, o, -1), axis=1)

        return jax.jit(run)

    return cached_program(("gp/loso", program), build)


def leave_one_state_out(state: ExactGPState, theta: Mapping[str, Array] | None = None) -> dict[str, Any] | None:
    """Leave-one-state-out predictive densities of an exact GP: cross-validation across inputs.

    Data gathered by acting in an environment visit the same states many times,
    so leaving out one *observation* leaves its copies in, and per-observation
    LOO measures little more than the fit. Leaving out every observation of one
    unique input (a state, for T) asks how well the GP predicts a state it has
    not seen from the others: ``log p(ybar_u | y_-u)``, the density of the
    state's average target. It is exact given the hyperparameters (the GP on
    group averages, :func:`log_likelihood`); with several hyperparameter draws
    (NUTS) they are integrated by Pareto-smoothed importance sampling, with
    weights ``1 / p(y_u | y_-u, theta)`` from the whole group's density.

    Args:
        state: the fitted GP.
        theta: ``[K, O, ...]`` hyperparameter draws (default: ``state.theta``, equally weighted).

    Returns:
        ``{"elpd": sum over states, "pointwise": [U] (raw units, outputs summed),
        "states": U, "pareto_k_max": (NUTS) the largest Pareto k}``, or None for
        kernels with a white-noise term (their noise is per observation, not per input).
    """
    grouped = group_repeated_inputs(state.program, np.asarray(state.x), np.asarray(state.y), always=True)
    if grouped is None:
        return None
    xu, g = grouped
    theta = state.theta if theta is None else theta
    lp_mean, lp_group = _loso_from_theta(state.program)(
        dict(theta), jnp.asarray(xu), jnp.asarray(g.counts), jnp.asarray(g.mean), jnp.asarray(g.scatter),
        state.y_scale)
    present = np.asarray(g.counts) > 0
    lp_mean, lp_group = np.asarray(lp_mean)[:, present], np.asarray(lp_group)[:, present]
    out: dict[str, Any] = {"states": int(present.sum())}
    if lp_mean.shape[0] == 1:
        pointwise = lp_mean[0]
    else:
        from arviz_stats.base.array import array_stats
        from scipy.special import logsumexp

        log_w, khat = array_stats.psislw(-lp_group.T, axis=-1)  # [U, K]
        log_w = log_w - logsumexp(log_w, axis=-1, keepdims=True)
        pointwise = logsumexp(log_w + lp_mean.T, axis=-1)
        out["pareto_k_max"] = float(np.max(khat))
    out["pointwise"] = pointwise
    out["elpd"] = float(np.sum(pointwise))
    return out


# --------------------------------------------------------------------------------------
# Fitting entry points
# --------------------------------------------------------------------------------------


def _as_kernel(kernel: Any) -> Any:
    if isinstance(kernel, Mapping):
        from priorguard.priors.kernels import parse_kernel

        return parse_kernel(kernel)
    return kernel


def _build_posterior(program: GPProgram, prep: Prepared, theta: Mapping[str, Array], weights: np.ndarray,
                     record: FitRecord) -> GPPosterior:
    chol, alpha, jitter = condition(program, theta, prep, stacklevel=4)
    record.optimizer["jitter_max"] = float(np.max(np.asarray(jitter)))
    record.optimizer["jitter"] = np.asarray(jitter)
    state = ExactGPState(
        program=program, columns=prep.columns, x=jnp.asarray(prep.x), y=jnp.asarray(prep.y),
        theta={k: jnp.asarray(v) for k, v in theta.items()}, chol=chol, alpha=alpha,
        weights=jnp.asarray(weights, dtype=jnp.float64), low=jnp.asarray(prep.low), scale=jnp.asarray(prep.scale),
        y_mean=jnp.asarray(prep.y_mean), y_scale=jnp.asarray(prep.y_scale),
    )
    return GPPosterior(state=state, prep=prep, record=record)


def fit_exact_gp(
    kernel: Any,
    data: Data,
    *,
    key: PRNGKeyArray,
    noise: Any = None,
    mean: str = "zero",
    inference: MapInference | NutsInference | None = None,
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
    use_prior: bool = True,
    max_predictive_samples: int = 100,
    init: Mapping[str, Any] | None = None,
    prior_mean: float | None = None,
    noise_floor: float = NOISE_FLOOR,
) -> GPPosterior:
    """Fits an exact GP from spec objects (the lower-level path of :func:`fit_gp`).

    Args:
        kernel: a fixed kernel spec (e.g. ``StationaryKernel(kind="rbf")``,
            ``CompositeKernel``) or its dict form.
        data: ``x [N, D]`` raw features, ``y [N, O]`` raw targets.
        key: PRNG key, consumed (restart points; NUTS chains).
        noise: observation-noise std: a float (fixed) or a ``Prior``; None: default prior.
        mean: ``"zero"`` or ``"constant"`` (``Normal(0, 1)`` on standardised targets).
        inference: ``MapInference`` (default) or ``NutsInference``.
        feature_names, features, feature_ranges, standardize, output_names:
            see :func:`prepare_data`.
        site_prefix: first part of every site name.
        use_prior: False maximises the marginal likelihood alone (type-II ML,
            same unconstrained coordinates, no Jacobian); MAP only.
        max_predictive_samples: NUTS draws kept (evenly thinned) for prediction.
        init: MAP starting point ``{site: [O, ...]}`` in unconstrained space.
        prior_mean: a fixed prior mean in the targets' units (see :func:`prepare_data`).
        noise_floor: a std (model units) added in quadrature to a learned noise;
            a fixed ``noise`` is used as given.

    Returns:
        A :class:`GPPosterior`.
    """
    inference = inference if inference is not None else MapInference(method="map")
    prep = prepare_data(data, feature_names=feature_names, features=features, feature_ranges=feature_ranges,
                        standardize=standardize, output_names=output_names, prior_mean=prior_mean)
    program = backend.compile_program(_as_kernel(kernel), noise=noise, mean=mean,
                                      feature_names=prep.feature_names, site_prefix=site_prefix,
                                      noise_floor=noise_floor)
    if isinstance(inference, NutsInference):
        if not use_prior:
            raise ValueError("use_prior=False is a MAP option; NUTS samples the posterior")
        return _fit_nuts(program, prep, inference, key=key, max_predictive_samples=max_predictive_samples)
    result = fit_map(program, prep, inference, key=key, use_prior=use_prior, init=init)
    return posterior_from_map(program, prep, result, use_prior=use_prior)


def posterior_from_map(program: GPProgram, prep: Prepared, result: MapResult, *, use_prior: bool) -> GPPosterior:
    """Conditions on the MAP point of ``result``."""
    objective = map_objective(program, prep.num_outputs, use_prior=use_prior)
    values = objective.constrain(jnp.asarray(result.u_flat)) if objective.size else {}
    values = {k: np.asarray(v)[None] for k, v in values.items()}  # [1, O, ...]
    theta = theta_from_sites(program, {k: v for k, v in values.items()}, (1, prep.num_outputs))
    record = FitRecord(
        method="map" if use_prior else "ml2",
        samples={k: v[None] for k, v in values.items()},  # [1, 1, O, ...]
        log_joint=np.asarray([[-result.value]]),
        optimizer={"values": result.values, "evaluations": result.evaluations, "u_flat": result.u_flat},
    )
    return _build_posterior(program, prep, theta, np.ones(1), record)


def condition_gp(
    kernel: Any,
    data: Data,
    *,
    noise: float,
    hyperparameters: Mapping[str, Any] | None = None,
    mean_constant: float | None = None,
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
) -> GPPosterior:
    """A GP posterior at given hyperparameters (no fitting).

    Args:
        kernel: kernel spec; its float hyperparameters are used as given.
        data: ``x [N, D]``, ``y [N, O]``.
        noise: observation-noise std (model units: standardised targets).
        hyperparameters: values for the kernel's remaining (prior-valued)
            hyperparameters, by site name relative to the prefix
            (``"kernel/lengthscale"``) or in full; arrays may be ``[...]`` or
            ``[O, ...]``.
        mean_constant: a constant mean (model units); None for zero mean.
        feature_names, features, feature_ranges, standardize, output_names,
            site_prefix: as in :func:`fit_exact_gp`.

    Returns:
        A :class:`GPPosterior` with one hyperparameter sample.
    """
    prep = prepare_data(data, feature_names=feature_names, features=features, feature_ranges=feature_ranges,
                        standardize=standardize, output_names=output_names)
    program = backend.compile_program(_as_kernel(kernel), noise=float(noise),
                                      mean="zero" if mean_constant is None else "constant",
                                      feature_names=prep.feature_names, site_prefix=site_prefix)
    given = {}
    for name, value in (hyperparameters or {}).items():
        site = name if name.startswith(site_prefix + "/") else f"{site_prefix}/{name}"
        given[site] = value
    if mean_constant is not None:
        given[f"{site_prefix}/mean/constant"] = mean_constant
    o = prep.num_outputs
    theta = {}
    for h in program.hypers:
        if h.fixed is not None:
            value = np.full(h.shape, h.fixed)
        elif h.site in given:
            value = np.asarray(given.pop(h.site), dtype=np.float64)
        else:
            free = [hh.site for hh in program.hypers if hh.free]
            raise ValueError(f"condition_gp needs a value for {h.site!r}; free hyperparameters: {free}")
        value = np.broadcast_to(value, (o, *h.shape)) if value.shape != (o, *h.shape) else value
        theta[h.site] = jnp.asarray(value)[None]
    if given:
        raise ValueError(f"unknown hyperparameters {sorted(given)}; sites are {[h.site for h in program.hypers]}")
    record = FitRecord(method="fixed", samples={}, log_joint=np.full((1, 1), np.nan))
    return _build_posterior(program, prep, theta, np.ones(1), record)


def _fit_nuts(program: GPProgram, prep: Prepared, inference: NutsInference, *, key: PRNGKeyArray,
              max_predictive_samples: int) -> GPPosterior:
    anonymous = program.anonymous()  # feature names do not change the sampler
    runner = cached_program(
        ("gp/nuts", anonymous, inference.warmup, inference.samples, inference.chains, inference.target_accept,
         inference.max_tree_depth),
        lambda: NutsProgram(functools.partial(gp_model, anonymous), warmup=inference.warmup,
                            samples=inference.samples, chains=inference.chains,
                            target_accept=inference.target_accept, max_tree_depth=inference.max_tree_depth,
                            name="gp/nuts"),
    )
    grouped = group_repeated_inputs(program, prep.x, prep.y)  # the same density on the unique inputs
    x = jnp.asarray(prep.x if grouped is None else grouped[0])
    if grouped is None:
        per_output = [jnp.asarray(prep.y[:, o]) for o in range(prep.num_outputs)]
    else:
        g = GroupedTargets(*(jnp.asarray(a) for a in grouped[1]))
        per_output = [GroupedTargets(g.counts, g.mean[:, o], g.scatter[:, o]) for o in range(prep.num_outputs)]
    outs = [runner.run(k, x, y) for k, y in zip(jax.random.split(key, prep.num_outputs), per_output)]
    sites = list(outs[0]["samples"])
    samples = {s: np.stack([np.asarray(out["samples"][s]) for out in outs], axis=2) for s in sites}  # [C, S, O, ...]
    stats = {k: np.stack([np.asarray(out["stats"][k]) for out in outs], axis=-1) for k in outs[0]["stats"]}
    c, s = stats["diverging"].shape[:2]
    steps = stats["num_steps"].astype(np.int64)
    sample_stats = {
        "diverging": stats["diverging"].any(axis=-1),
        "tree_depth": np.where(steps > 0, np.floor(np.log2(np.maximum(steps, 1))) + 1, 0).astype(np.int64).max(-1),
        "n_steps": steps.max(axis=-1),
        "lp": -stats["potential_energy"].sum(axis=-1),
        "acceptance_rate": stats["accept_prob"].mean(axis=-1),
    }
    record = FitRecord(method="nuts", samples=samples, log_joint=sample_stats["lp"], sample_stats=sample_stats)
    record.diagnostics.update(_warn_nuts(record, prep))
    flat = {k: v.reshape(c * s, *v.shape[2:]) for k, v in samples.items()}
    total = c * s
    keep = np.unique(np.linspace(0, total - 1, min(total, max_predictive_samples)).round().astype(int))
    theta = theta_from_sites(program, {k: v[keep] for k, v in flat.items()}, (len(keep), prep.num_outputs))
    return _build_posterior(program, prep, theta, np.full(len(keep), 1.0 / len(keep)), record)


def _warn_nuts(record: FitRecord, prep: Prepared) -> dict[str, float]:
    import xarray as xr

    post = xr.Dataset({
        name.replace("/", "."): (["chain", "draw", *[f"d{i}" for i in range(v.ndim - 2)]], v)
        for name, v in record.samples.items()
    })
    return warn_on_diagnostics(post, record.sample_stats["diverging"], stacklevel=5)


def fit_gp(
    spec: GPModel | Mapping[str, Any],
    data: Data,
    *,
    key: PRNGKeyArray,
    feature_names: Sequence[str] | None = None,
    feature_ranges: Any = None,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
    standardize: bool = True,
) -> Any:
    """Fits the GP a spec declares: exact, sparse (``spec.sparse``) or a structure search.

    Args:
        spec: a :class:`~priorguard.priors.models.GPModel` (or a mapping of its fields).
        data: ``x [N, D]`` raw features (columns named by ``feature_names``),
            ``y [N, O]`` raw targets.
        key: PRNG key, consumed.
        feature_names: names of the ``D`` columns; ``spec.features`` and kernel
            ``active_dims`` names are resolved against them.
        feature_ranges: ``(low, high)`` per column (or a name -> pair mapping);
            inputs are scaled to the unit cube by them (None: training min/max).
        site_prefix: first part of every site name (``terminal``, ``instrumental``, ``world``).
        output_names: names of the outputs (datatree coordinates).
        standardize: standardise targets (the default priors assume it).

    Returns:
        :class:`GPPosterior`, :class:`~priorguard.models.sparse_gp.SparseGPPosterior`
        or :class:`~priorguard.models.structure_search.StructurePosterior`.

    Example:
        >>> import jax, numpy as np
        >>> from priorguard.models.base import as_data
        >>> x = np.linspace(0.0, 1.0, 12)[:, None]
        >>> spec = GPModel(model="gp", kernel={"kind": "matern52"}, inference={"method": "map", "steps": 20})
        >>> post = fit_gp(spec, as_data(x, np.sin(5 * x)), key=jax.random.key(0), feature_names=["t"],
        ...               feature_ranges=[(0.0, 1.0)])
        >>> sorted(post.map_hyperparameters())
        ['terminal/kernel/lengthscale', 'terminal/kernel/variance', 'terminal/noise']
    """
    if isinstance(spec, Mapping):
        spec = GPModel.model_validate({"model": "gp", **spec})
    fixed = not isinstance(spec.mean, str)  # a number: a fixed prior mean in the targets' units
    mean = "zero" if fixed else spec.mean
    common = dict(feature_names=feature_names, features=spec.features, feature_ranges=feature_ranges,
                  standardize=standardize, site_prefix=site_prefix, output_names=output_names,
                  prior_mean=float(spec.mean) if fixed else None, noise_floor=spec.noise_floor)
    if isinstance(spec.kernel, StructureSearch):
        from priorguard.models.structure_search import fit_structure_search

        return fit_structure_search(spec.kernel, data, key=key, noise=spec.noise, mean=mean,
                                    inference=spec.inference, sparse=spec.sparse, **common)
    if spec.sparse is not None:
        if isinstance(spec.inference, NutsInference):
            raise ValueError("a sparse GP fits its hyperparameters by MAP (variational); set inference.method = 'map'")
        from priorguard.models.sparse_gp import fit_sparse_gp

        return fit_sparse_gp(spec.kernel, data, key=key, noise=spec.noise, mean=mean, sparse=spec.sparse,
                             **common)
    return fit_exact_gp(spec.kernel, data, key=key, noise=spec.noise, mean=mean, inference=spec.inference,
                        **common)


# --------------------------------------------------------------------------------------
# ArviZ
# --------------------------------------------------------------------------------------


def site_var(name: str) -> str:
    """DataTree variable name of a site (DataTree forbids ``/``): ``terminal.kernel.lengthscale``."""
    return name.replace("/", ".")


def posterior_dataset(program: GPProgram, samples: Mapping[str, np.ndarray], output_names: Sequence[str]) -> Any:
    """``posterior`` group: every free site, dims ``(chain, draw, output[, <site>.feature])``."""
    import xarray as xr

    by_site = {h.site: h for h in program.hypers}
    data_vars, coords = {}, {"output": list(output_names)}
    for name, v in samples.items():
        var = site_var(name)
        dims = ["chain", "draw", "output"]
        h = by_site.get(name)
        for i in range(v.ndim - 3):
            dim = f"{var}.feature" if (h is not None and h.dim_names and i == 0) else f"{var}_dim_{i}"
            dims.append(dim)
            if h is not None and h.dim_names and i == 0:
                coords[dim] = list(h.dim_names)
        data_vars[var] = (dims, np.asarray(v))
    ds = xr.Dataset(data_vars, coords=coords)
    if samples:
        c, s = next(iter(samples.values())).shape[:2]
        ds = ds.assign_coords(chain=np.arange(c), draw=np.arange(s))
    return ds


def observation_groups(prep: Prepared, prefix: str, loglik: np.ndarray, y_rep: np.ndarray) -> dict[str, Any]:
    """``observed_data``, ``constant_data``, ``log_likelihood`` (``[C, S, N]``) and ``posterior_predictive``."""
    import xarray as xr

    obs = f"{site_var(prefix)}.y"
    n = prep.n
    base = {"obs": np.arange(n), "output": list(prep.output_names)}
    c, s = loglik.shape[:2]
    samp = {"chain": np.arange(c), "draw": np.arange(s)}
    return {
        "observed_data": xr.Dataset({obs: (["obs", "output"], prep.raw_y)}, coords=base),
        "constant_data": xr.Dataset(
            {f"{site_var(prefix)}.x": (["obs", "input"], prep.raw_x)},
            coords={"obs": np.arange(n), "input": np.arange(prep.raw_x.shape[1])}),
        "log_likelihood": xr.Dataset({obs: (["chain", "draw", "obs"], loglik)}, coords={**samp, "obs": np.arange(n)}),
        "posterior_predictive": xr.Dataset(
            {obs: (["chain", "draw", "obs", "output"], y_rep)},
            coords={"chain": np.arange(y_rep.shape[0]), "draw": np.arange(y_rep.shape[1]), **base}),
    }


def exact_datatree(post: GPPosterior, *, ppc_draws: int = 100) -> Any:
    """ArviZ DataTree of an exact GP.

    Groups: ``posterior`` (free sites; MAP as ``chain=1, draw=1``; NUTS every
    draw), ``sample_stats`` (NUTS: ``diverging``, ``tree_depth``, ``n_steps``,
    ``lp``, ``acceptance_rate``; MAP: ``lp``), ``observed_data``,
    ``constant_data``, ``log_likelihood`` and ``posterior_predictive``.

    ``log_likelihood`` holds the exact leave-one-out density
    ``log p(y_i | y_-i, theta_s)`` per hyperparameter draw (outputs summed,
    raw units) — a GP's observations are not independent given the
    hyperparameters, but this factor is what makes ``az.loo``'s importance
    weights ``1 / p(y_i | y_-i, theta)`` exact, so its ``elpd`` is the GP's
    leave-one-out predictive density with the hyperparameters integrated.
    Its ``chain`` and ``draw`` match ``posterior``. With one draw (MAP)
    ``az.loo`` cannot run; the exact LOO ``elpd`` is then in the attribute
    ``elpd_loo_exact``. The attributes ``elpd_loso`` and ``loso_states`` hold
    the leave-one-state-out score (:func:`leave_one_state_out`; absent for
    kernels with white noise), and for NUTS ``loso_pareto_k_max``.
    ``posterior_predictive`` holds ``ppc_draws`` replicated datasets at the
    training inputs (joint over points: function draw plus noise).
    Variable names are site names with ``/`` written ``.``.
    """
    import xarray as xr

    prep, record, st = post.prep, post.record, post.state
    prefix = st.program.site_prefix
    groups: dict[str, Any] = {"posterior": posterior_dataset(st.program, record.samples, prep.output_names)}
    if record.sample_stats is not None:
        c, s = record.sample_stats["diverging"].shape
        groups["sample_stats"] = xr.Dataset(
            {k: (["chain", "draw"], v) for k, v in record.sample_stats.items()},
            coords={"chain": np.arange(c), "draw": np.arange(s)})
    elif record.method != "fixed":
        groups["sample_stats"] = xr.Dataset({"lp": (["chain", "draw"], record.log_joint)},
                                            coords={"chain": [0], "draw": [0]})
    if record.method == "nuts":
        first = next(iter(record.samples.values()))
        c, s = first.shape[:2]
        flat = {k: v.reshape(c * s, *v.shape[2:]) for k, v in record.samples.items()}
        theta = theta_from_sites(st.program, flat, (c * s, prep.num_outputs))
        loo = np.asarray(_loo_from_theta(st.program)(theta, st.x, st.y, st.y_scale)).reshape(c, s, -1)
    else:
        loo = np.asarray(post.loo_log_density())[None]  # [1, 1, N]
    draws = post.sample_functions(jax.random.key(0) if record.key is None else record.key, ppc_draws)
    f = np.asarray(draws(jnp.asarray(prep.raw_x)))  # [R, N, O]
    noise_sd = np.sqrt(np.asarray(mixture_moments(st.weights, *_exact_components(st, jnp.asarray(prep.raw_x))
                                                  ).aleatoric_var))
    eps = np.random.default_rng(0).standard_normal(f.shape)
    groups.update(observation_groups(prep, prefix, loo, (f + eps * noise_sd)[None]))
    dt = xr.DataTree.from_dict(groups)
    dt.attrs.update({"model": "gp", "inference": record.method, "site_prefix": prefix,
                     "kernel": st.program.describe(), "jitter": post.jitter,
                     "noise_floor": st.program.noise_floor})
    if record.method != "nuts":
        dt.attrs["elpd_loo_exact"] = float(np.sum(loo))
    loso = leave_one_state_out(st, theta if record.method == "nuts" else None)
    if loso is not None:
        dt.attrs["elpd_loso"] = loso["elpd"]
        dt.attrs["loso_states"] = loso["states"]
        if "pareto_k_max" in loso:
            dt.attrs["loso_pareto_k_max"] = loso["pareto_k_max"]
    return dt

