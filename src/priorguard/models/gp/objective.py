"""The numpyro model of a GP and its MAP fit.

Every hyperparameter is a numpyro site with its declared (or default) prior:
``{prefix}/kernel/lengthscale``, ``{prefix}/kernel/terms/0/variance``,
``{prefix}/noise`` (observation noise *std*), ``{prefix}/mean/constant``;
hyperpriors add ``{site}/{param}``.

MAP is the mode of the posterior *in unconstrained space* (positive parameters
as logs, numpyro's ``biject_to(support)``), i.e. log marginal likelihood + log
prior + log-det-Jacobian. That is the density the Laplace evidence of
:mod:`priorguard.models.gp.search` integrates, and it keeps the mode away from
the boundary. Optimised by SciPy's L-BFGS-B on one jitted value-and-gradient
per step (unconstrained values boxed to ``[-15, 15]``), or by Adam in one
compiled ``lax.scan``; the objective is compiled once per (kernel structure,
priors, O) and reused by every later fit of the same shapes. Repeated inputs
are grouped (:func:`priorguard.models.gp.data.group_repeated_inputs`,
:func:`log_likelihood`).

Shapes: N training points (U unique), D model inputs, O outputs, P unconstrained parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray

from priorguard._compile import cached_program, count_trace
from priorguard.models.gp.data import GroupedTargets, Prepared, group_repeated_inputs
from priorguard.models.gp.kernels import GPProgram
from priorguard.models.gp.linalg import (
    GPNumericalError,
    log_marginal_likelihood,
    log_marginal_likelihood_autodiff,
    map_unbatched,
)
from priorguard.priors.models import MapInference

__all__ = ["MapObjective", "MapResult", "fit_map", "gp_model", "log_likelihood", "map_objective",
           "theta_from_sites"]

#: Box on unconstrained hyperparameters during L-BFGS-B (e^15 ~ 3e6).
UNCONSTRAINED_BOUND = 15.0


def gp_model(program: GPProgram, x: Array | None = None, y: Array | None = None, *,
             mll: Any = log_marginal_likelihood) -> dict[str, Array]:
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


def log_likelihood(program: GPProgram, theta: Mapping[str, Array], x: Array, y: Array | GroupedTargets, *,
                   mll: Any = log_marginal_likelihood) -> Array:
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
        return mll(program.training_covariance(theta, x), y - program.mean_value(theta))
    k, centred, within, present = grouped_system(program, theta, x, y)
    return (mll(k, centred) + jnp.sum(jnp.where(present, within, 0.0))
            + 0.5 * math.log(2.0 * math.pi) * jnp.sum(~present))


def grouped_system(program: GPProgram, theta: Mapping[str, Array], x: Array,
                    y: GroupedTargets) -> tuple[Array, Array, Array, Array]:
    """The GP on group averages (see :func:`log_likelihood`) of one output.

    Returns ``(K [U, U] with noise s^2 / n_u, centred averages [U], within-group
    log terms [U], present [U])``; padding rows are independent unit normals at 0.
    """
    present = y.counts > 0
    n = jnp.where(present, y.counts, 1.0)
    noise2 = theta[program.noise.site] ** 2
    k = program.kernel.gram(theta, x, x, same=True) + jnp.diag(noise2 / n)
    k = jnp.where(present[:, None] & present[None, :], k, jnp.eye(k.shape[0], dtype=k.dtype))
    centred = jnp.where(present, y.mean - program.mean_value(theta), 0.0)
    within = (-0.5 * (n - 1.0) * (math.log(2.0 * math.pi) + jnp.log(noise2)) - 0.5 * jnp.log(n)
              - y.scatter / (2.0 * noise2))
    return k, centred, within, present



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
        mll = log_marginal_likelihood if analytic else log_marginal_likelihood_autodiff
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

                return jnp.sum(map_unbatched(one, u, y.mean.T, y.scatter.T))
            return jnp.sum(map_unbatched(lambda uo, yo: single(uo, x, yo), u, y.T))

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


def objective_inputs(program: GPProgram, prep: Prepared) -> tuple[Array, Array | GroupedTargets]:
    """What the MAP objective reads: ``(x, y)``, or the unique inputs and their
    :class:`GroupedTargets` (the same objective; discrete environments revisit few states)."""
    grouped = group_repeated_inputs(program, prep.x, prep.y)
    if grouped is None:
        return jnp.asarray(prep.x), jnp.asarray(prep.y)
    return jnp.asarray(grouped[0]), GroupedTargets(*(jnp.asarray(a) for a in grouped[1]))


def fit_map(program: GPProgram, prep: Prepared, inference: MapInference, *, key: PRNGKeyArray,
            use_prior: bool = True, init: Mapping[str, Any] | None = None) -> MapResult:
    """Minimises the negative log joint (``use_prior=False``: negative log marginal likelihood).

    Restart 0 starts at the prior median (or ``init``: ``{site: [O, ...]}``
    unconstrained), later restarts at numpyro's ``init_to_uniform``.
    """
    objective = map_objective(program, prep.num_outputs, use_prior=use_prior)
    x, y = objective_inputs(program, prep)
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

