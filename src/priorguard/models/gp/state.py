"""A conditioned exact GP: factors, the fitted state, per-sample moments and their mixture.

Conditioning is a Cholesky of ``K + noise^2 I`` with escalating jitter
(``1e-8 ... 1e-2`` of the mean diagonal); the jitter used is reported as
:attr:`priorguard.models.gp.exact.GPPosterior.jitter` and by a
:class:`JitterWarning`; if even the largest fails,
:class:`~priorguard.models.gp.linalg.GPNumericalError`.

Shapes: S hyperparameter samples, O outputs, N training points, M query points.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from priorguard._compile import cached_program, count_trace
from priorguard.models.base import Prediction
from priorguard.models.gp.data import GroupedTargets, Prepared, group_repeated_inputs
from priorguard.models.gp.kernels import GPProgram
from priorguard.models.gp.linalg import JITTER_LEVELS, GPNumericalError, cholesky_with_jitter, map_unbatched
from priorguard.models.gp.objective import grouped_system

__all__ = ["ExactGPState", "Factors", "FitRecord", "JitterWarning", "condition", "mixture_log_density", "mixture_moments"]


class JitterWarning(UserWarning):
    """A covariance matrix needed jitter on its diagonal to factorise."""


def _conditioner(program: GPProgram, grouped: bool = False) -> Any:
    program = program.anonymous()  # feature names do not change the computation

    def build() -> Any:
        def one(theta: Mapping[str, Array], x: Array, y: Array) -> tuple[Array, Array, Array]:
            count_trace("gp/condition")
            k = program.training_covariance(theta, x)
            chol, jitter = cholesky_with_jitter(k)
            alpha = jax.scipy.linalg.cho_solve((chol, True), y - program.mean_value(theta))
            return chol, alpha, jitter

        def one_grouped(theta: Mapping[str, Array], x: tuple[Array, Array], ybar: Array) -> tuple[Array, Array, Array]:
            count_trace("gp/condition")
            xu, counts = x
            k, centred, _, _ = grouped_system(program, theta, xu, GroupedTargets(counts, ybar, jnp.zeros_like(ybar)))
            chol, jitter = cholesky_with_jitter(k)
            return chol, jax.scipy.linalg.cho_solve((chol, True), centred), jitter

        def run(theta: Mapping[str, Array], x: Any, y: Array) -> tuple[Array, Array, Array]:
            flat, s, o = flat_draws(program, theta)
            fn = one_grouped if grouped else one
            out = map_unbatched(lambda th, yy: fn(th, x, yy), flat, jnp.tile(y.T, (s, 1)))
            return jax.tree_util.tree_map(lambda a: a.reshape(s, o, *a.shape[1:]), out)

        return jax.jit(run)

    return cached_program(("gp/condition_grouped" if grouped else "gp/condition", program), build)


class Factors(NamedTuple):
    """What :func:`condition` gives: the system over ``basis`` and its factor.

    Attributes:
        basis: ``[U, Dm]`` the inputs the factor is over: the training inputs, or (where
            inputs repeat) the unique ones, padded to a shape bucket.
        counts: ``[U]`` training rows at each basis input (0 on padding; all 1 ungrouped).
        inverse: ``[N]`` each training row's basis input.
        chol: ``[S, O, U, U]`` lower factor of the system (``K + noise^2 I`` over the rows,
            or the GP on the group averages, ``K_UU + noise^2 diag(1 / counts)``).
        alpha: ``[S, O, U]`` the system's inverse times the centred targets (or averages).
        jitter: ``[S, O]`` the absolute jitter added to the system's diagonal.
        grouped: whether the basis is the unique inputs.
    """

    basis: Array
    counts: Array
    inverse: Array
    chol: Array
    alpha: Array
    jitter: Array
    grouped: bool


def condition(program: GPProgram, theta: Mapping[str, Array], prep: Prepared, *,
              stacklevel: int = 3) -> Factors:
    """Factorises ``K + noise^2 I`` for every sample and output (``theta`` leaves ``[S, O, ...]``).

    Where inputs repeat (:func:`~priorguard.models.gp.data.group_repeated_inputs`), the GP on
    the unique inputs with their average targets and noise ``noise^2 / n``: the same posterior
    over the latent function (the rows' deviations from their input's average carry no
    information about it), at ``O(U^3)`` instead of ``O(N^3)``.

    Returns:
        :class:`Factors`.

    Raises:
        GPNumericalError: the matrix stayed indefinite at the largest jitter.
    """
    x_rows, y_rows = np.asarray(prep.x), np.asarray(prep.y)
    groups = group_repeated_inputs(program, x_rows, y_rows, return_inverse=True)
    if groups is None:
        basis, counts, inverse = x_rows, np.ones(len(x_rows)), np.arange(len(x_rows))
        chol, alpha, jitter = _conditioner(program)(dict(theta), jnp.asarray(x_rows), jnp.asarray(y_rows))
    else:
        basis, g, inverse = groups
        counts = np.asarray(g.counts)
        chol, alpha, jitter = _conditioner(program, grouped=True)(
            dict(theta), (jnp.asarray(basis), jnp.asarray(counts)), jnp.asarray(g.mean))
    diag_ok = np.asarray(jnp.all(jnp.isfinite(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1))
    if not diag_ok.all():
        bad = np.argwhere(~diag_ok)[0]
        values = {s: np.asarray(v[tuple(bad)]).round(6).tolist() for s, v in theta.items()}
        raise GPNumericalError(
            f"the covariance of {program.describe()} (output {int(bad[1])}) is not positive definite even with"
            f" jitter {JITTER_LEVELS[-1]:g} x mean diagonal added; hyperparameters: {values}. Check for"
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
    return Factors(jnp.asarray(basis), jnp.asarray(counts, jnp.float64), jnp.asarray(inverse), chol, alpha, jitter,
                   groups is not None)


def flat_draws(program: GPProgram, theta: Mapping[str, Array]) -> tuple[dict[str, Array], int, int]:
    """``theta`` leaves ``[K, O, ...]`` flattened to ``[K * O, ...]``, with K and O."""
    k, o = theta[program.noise.site].shape[:2]
    return jax.tree_util.tree_map(lambda a: a.reshape(k * o, *a.shape[2:]), dict(theta)), k, o


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
    chol: Float[Array, "S O U U"]
    alpha: Float[Array, "S O U"]
    weights: Float[Array, " S"]
    low: Float[Array, " Dm"]
    scale: Float[Array, " Dm"]
    y_mean: Float[Array, " O"]
    y_scale: Float[Array, " O"]
    #: the factor's inputs and rows per input (see :class:`Factors`); ``x`` / ``y`` stay the rows
    basis: Float[Array, "U Dm"]
    counts: Float[Array, " U"]
    inverse: Array
    jitter: Float[Array, "S O"]
    grouped: bool = eqx.field(static=True, default=False)

    def model_inputs(self, x: Float[Array, "M D"]) -> Float[Array, "M Dm"]:
        x = jnp.asarray(x, dtype=self.x.dtype)
        return (x[:, jnp.asarray(self.columns)] - self.low) / self.scale


def _latent_moments(program: GPProgram, theta: Mapping[str, Array], chol: Array, alpha: Array, x_train: Array,
                    xs: Array, present: Array | None = None) -> tuple[Array, Array, Array]:
    """Latent mean, latent variance and noise variance ``[M]`` of one sample and output
    (``present``: the basis rows that are not padding, where the basis is grouped)."""
    kernel = program.kernel
    kxs = kernel.gram(theta, x_train, xs, same=False)
    if present is not None:  # padding rows of a grouped basis are outside the system
        kxs = jnp.where(present[:, None], kxs, 0.0)
    mean = kxs.T @ alpha + program.mean_value(theta)
    v = jax.scipy.linalg.solve_triangular(chol, kxs, lower=True)
    prior_var = kernel.gram_diag(theta, xs, white=False)
    var = jnp.maximum(prior_var - jnp.sum(v * v, axis=0), 0.0)
    noise = theta[program.noise.site] ** 2 * jnp.ones_like(mean)
    if kernel.has_white():
        noise = noise + kernel.gram_diag(theta, xs, white=True) - prior_var
    return mean, var, noise


@jax.jit
def exact_components(state: ExactGPState, x: Array) -> tuple[Array, Array, Array]:
    """Per-sample moments in raw units, each ``[S, M, O]``."""
    count_trace("gp/predict")
    xs = state.model_inputs(x)

    present = state.counts > 0 if state.grouped else None

    def one(theta: Any, chol: Array, alpha: Array) -> tuple[Array, Array, Array]:
        return _latent_moments(state.program, theta, chol, alpha, state.basis, xs, present)

    s, o = state.alpha.shape[:2]
    flat = jax.tree_util.tree_map(lambda a: a.reshape(s * o, *a.shape[2:]), (state.theta, state.chol, state.alpha))
    out = map_unbatched(one, *flat)  # each [S * O, M]
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


@dataclass(frozen=True, eq=False)
class FitRecord:
    """What a fit leaves for ``to_datatree`` and reports (identity-hashed)."""

    method: str
    samples: dict[str, np.ndarray]  # site -> [C, S, O, ...] constrained, every free site
    log_joint: np.ndarray  # [C, S]
    sample_stats: dict[str, np.ndarray] | None = None  # NUTS: [C, S]
    diagnostics: dict[str, float] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    #: the key of the DataTree's posterior-predictive draws (derived from the fit's key; None: key(0))
    key: Any = None
