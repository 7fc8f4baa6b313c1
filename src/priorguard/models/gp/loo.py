"""Cross-validation of an exact GP: leave-one-out and leave-one-state-out densities.

Shapes: S (or K) hyperparameter samples, O outputs, N training points, U unique inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from priorguard._compile import cached_program, count_trace
from priorguard.models.gp.data import GroupedTargets, group_repeated_inputs
from priorguard.models.gp.kernels import GPProgram
from priorguard.models.gp.linalg import cholesky_with_jitter, map_unbatched
from priorguard.models.gp.objective import grouped_system
from priorguard.models.gp.state import ExactGPState, flat_draws

__all__ = ["leave_one_state_out", "loo_density", "loo_from_theta", "loo_replicates"]


def _exact_loo_one(chol: Array, alpha: Array) -> tuple[Array, Array]:
    n = chol.shape[-1]
    linv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(n, dtype=chol.dtype), lower=True)
    kinv_diag = jnp.sum(linv * linv, axis=0)
    return alpha / kinv_diag, 1.0 / kinv_diag  # residual y_i - mu_-i, and its variance


def _loo_log_density(resid: Array, var: Array, y_scale: Array, per_output: bool = False) -> Array:
    """``[..., O, N]`` residuals and variances (model units) -> ``[..., N]`` raw-unit log densities
    (``per_output``: ``[..., N, O]``, one per output; the outputs are independent GPs)."""
    ys = y_scale[:, None]
    dens = -0.5 * (jnp.log(2 * jnp.pi * var * ys**2) + resid**2 / var)
    return jnp.swapaxes(dens, -1, -2) if per_output else jnp.sum(dens, axis=-2)


def loo_density(resid: Any, var: Any, y_scale: Any) -> np.ndarray:
    """``[K, O, N]`` LOO residuals and variances (model units, as ``loo_from_theta(moments=True)``
    gives them) -> ``[K, N, O]`` raw-unit log densities."""
    return np.asarray(_loo_log_density(jnp.asarray(resid), jnp.asarray(var), jnp.asarray(y_scale), True))


def loo_replicates(resid: Any, var: Any, raw_y: Any, y_scale: Any, key: Any) -> np.ndarray:
    """``[K, N, O]`` draws of each observation from its leave-one-out predictive (raw units):
    ``y_i - resid_i + sd_i * eps``, one per LOO moment (``[K, O, N]``, model units)."""
    resid, var, ys = np.asarray(resid), np.asarray(var), np.asarray(y_scale)[None, :, None]
    eps = np.asarray(jax.random.normal(key, resid.shape, jnp.float64))
    return np.swapaxes(np.asarray(raw_y).T[None] + ys * (np.sqrt(var) * eps - resid), 1, 2)


def loo_from_theta(program: GPProgram, *, per_output: bool = False, moments: bool = False) -> Any:
    """``(theta [K, O, ...], x, y, y_scale) -> [K, N]`` exact LOO log densities (no factor kept;
    ``per_output``: ``[K, N, O]``; ``moments``: the residuals ``y_i - mu_-i`` and variances
    ``[K, O, N]`` in model units instead, see :func:`loo_density`).

    Where inputs repeat (:func:`~priorguard.models.gp.data.group_repeated_inputs`), the same
    numbers come from the GP on the U unique inputs (:func:`_grouped_loo_one`): ``O(U^3 + N)``
    per draw instead of ``O(N^3)``. ``x`` and ``y`` must be concrete (they are grouped on the host).
    """
    program = program.anonymous()  # feature names do not change the computation
    full = cached_program(("gp/loo_samples", program, per_output, moments),
                          lambda: _loo_program(program, per_output, moments, grouped=False))
    grouped = cached_program(("gp/loo_grouped", program, per_output, moments),
                             lambda: _loo_program(program, per_output, moments, grouped=True))

    def call(theta: Mapping[str, Array], x: Any, y: Any, y_scale: Any) -> Any:
        x_np, y_np = np.asarray(x), np.asarray(y)
        groups = group_repeated_inputs(program, x_np, y_np, return_inverse=True)
        if groups is None:
            return full(dict(theta), x, y, y_scale)
        xu, g, inverse = groups
        return grouped(dict(theta), (jnp.asarray(xu), jnp.asarray(g.counts), jnp.asarray(g.mean),
                                     jnp.asarray(inverse)), jnp.asarray(y_np), y_scale)

    return call


def _loo_program(program: GPProgram, per_output: bool, moments: bool, *, grouped: bool) -> Any:
    def one(theta: Mapping[str, Array], x: Any, y: Array) -> tuple[Array, Array]:
        if grouped:
            return _grouped_loo_one(program, theta, *x, y)
        k = program.training_covariance(theta, x)
        chol, _ = cholesky_with_jitter(k)
        alpha = jax.scipy.linalg.cho_solve((chol, True), y - program.mean_value(theta))
        return _exact_loo_one(chol, alpha)

    def run(theta: Mapping[str, Array], x: Any, y: Array, y_scale: Array) -> Any:
        count_trace("gp/loo_grouped" if grouped else "gp/loo_samples")
        flat, s, o = flat_draws(program, theta)
        n = y.shape[0]
        if grouped:  # each output's group averages travel with its draws
            xu, counts, ybar, inverse = x
            resid, var = map_unbatched(lambda th, yy, yb: one(th, (xu, counts, yb, inverse), yy), flat,
                                       jnp.tile(y.T, (s, 1)), jnp.tile(ybar.T, (s, 1)))
        else:
            resid, var = map_unbatched(lambda th, yy: one(th, x, yy), flat, jnp.tile(y.T, (s, 1)))
        if moments:
            return resid.reshape(s, o, n), var.reshape(s, o, n)
        return _loo_log_density(resid.reshape(s, o, n), var.reshape(s, o, n), y_scale, per_output)

    return jax.jit(run)


def _grouped_loo_one(program: GPProgram, theta: Mapping[str, Array], xu: Array, counts: Array, ybar: Array,
                     inverse: Array, y: Array) -> tuple[Array, Array]:
    """Exact LOO residuals and variances ``([N], [N])`` of one output, from the GP on group averages.

    With ``Z`` the rows' group indicator, ``n`` the group sizes and ``A = K_UU + s^2 diag(1/n)``
    the system on the averages (:func:`~priorguard.models.gp.objective.grouped_system`), the
    rows' covariance ``K = Z K_UU Z^T + s^2 I`` has the inverse
    ``(I - Z diag(1/n) Z^T) / s^2 + Z diag(1/n) A^-1 diag(1/n) Z^T`` (deviations from a group's
    average are independent noise; the averages are a GP with noise ``s^2 / n``). So for row
    ``i`` of group ``u``: ``[K^-1]_ii = (1 - 1/n_u) / s^2 + [A^-1]_uu / n_u^2`` and
    ``[K^-1 (y - m)]_i = (y_i - ybar_u) / s^2 + [A^-1 (ybar - m)]_u / n_u``; the LOO identities
    take it from there.
    """
    zeros = jnp.zeros_like(ybar)
    k, centred, _, present = grouped_system(program, theta, xu, GroupedTargets(counts, ybar, zeros))
    chol, _ = cholesky_with_jitter(k)
    a = jax.scipy.linalg.cho_solve((chol, True), centred)
    linv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(chol.shape[-1], dtype=chol.dtype), lower=True)
    a_inv_diag = jnp.sum(linv * linv, axis=0)
    noise2 = theta[program.noise.site] ** 2
    n = jnp.where(present, counts, 1.0)[inverse]
    kinv_diag = (1.0 - 1.0 / n) / noise2 + a_inv_diag[inverse] / n**2
    kinv_y = (y - ybar[inverse]) / noise2 + a[inverse] / n
    return kinv_y / kinv_diag, 1.0 / kinv_diag


def _loso_one(program: GPProgram, theta: Mapping[str, Array], xu: Array, y: GroupedTargets) -> tuple[Array, Array]:
    """Leave-one-state-out log densities of one sample and output (model units), ``([U], [U])``.

    The GP on the group averages (:func:`grouped_system`) gives, by the exact
    LOO identities, the mean and variance of ``ybar_u`` given every other unique
    input's targets. Returns the log density of ``ybar_u`` and that of all the
    group's targets (the first plus the within-group term); 0 on padding rows.
    """
    k, centred, within, present = grouped_system(program, theta, xu, y)
    chol, _ = cholesky_with_jitter(k)
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
            flat, k, o = flat_draws(program, theta)
            lp_mean, lp_group = map_unbatched(
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
