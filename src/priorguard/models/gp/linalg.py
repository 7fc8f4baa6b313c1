"""GP linear algebra: distances, jittered Cholesky, inverse from the factor, the marginal likelihood.

The exact log marginal likelihood has a hand-written reverse-mode rule
(:func:`log_marginal_likelihood`): one Cholesky (``potrf``) plus one inverse
from the factor (``potri``), gradient ``0.5 (alpha alpha^T - K^-1)`` w.r.t.
``K`` — autodiff through the Cholesky costs about twice as much (measured by
``benchmarks/bench_gp.py``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = [
    "JITTER_LEVELS",
    "GPNumericalError",
    "cholesky_with_jitter",
    "circle_embedding",
    "inverse_from_cholesky",
    "log_marginal_likelihood",
    "log_marginal_likelihood_autodiff",
    "map_unbatched",
    "squared_distances",
]

#: Jitter levels tried in turn, relative to the mean of the matrix diagonal.
JITTER_LEVELS: tuple[float, ...] = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)

#: Smallest matrix whose inverse goes to LAPACK ``potri`` through a host callback (CPU).
POTRI_MIN_N = 1024


class GPNumericalError(FloatingPointError):
    """A covariance matrix stayed indefinite after the largest jitter."""


def map_unbatched(fn: Any, *args: Any) -> Any:
    """``fn`` over the leading axis of ``args`` without batching its linear algebra.

    ``lax.map`` (or a plain call when the axis has length 1) instead of
    ``vmap``: jaxlib 0.10.2's CPU LAPACK kernels split a *batched*
    ``trsm``/``potrf`` over the XLA thread pool (``ParallelBatchMap``) and
    were seen to deadlock on a 2-core pool when two such calls ran at once.
    Outputs and hyperparameter samples are few, so the sequential loop costs
    nothing measurable.
    """
    n = jax.tree_util.tree_leaves(args)[0].shape[0]
    if n == 1:
        out = fn(*jax.tree_util.tree_map(lambda a: a[0], args))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return jax.lax.map(lambda a: fn(*a), args)


def squared_distances(a: Array, b: Array, *, same: bool) -> Array:
    """Squared distances ``[N1, N2]`` between rows of already scaled inputs.

    Expanded as ``|a|^2 + |b|^2 - 2 a.b`` so the work (and its gradient) is a
    matrix product rather than an ``[N1, N2, D]`` tensor; clamped at 0, and
    exactly 0 on the diagonal of a Gram matrix (``same``).
    """
    sa = jnp.sum(a * a, axis=-1)
    sb = sa if same else jnp.sum(b * b, axis=-1)
    r2 = jnp.maximum(sa[:, None] + sb[None, :] - 2.0 * (a @ b.T), 0.0)
    if same:
        n = a.shape[0]
        diag = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0) == jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
        r2 = jnp.where(diag, 0.0, r2)
    return r2


def circle_embedding(a: Array, period: Array, ls: Array) -> Array:
    """``[N, 2d]`` embedding with ``|e(x) - e(x')|^2 = sum_d (sin(pi (x_d - x'_d) / p) / l_d)^2``."""
    ang = 2 * jnp.pi * a / period
    ls = jnp.broadcast_to(ls, (a.shape[-1],))
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1) / jnp.concatenate([2 * ls, 2 * ls])


# --------------------------------------------------------------------------------------
# Cholesky with escalating jitter, and the marginal likelihood with an analytic VJP
# --------------------------------------------------------------------------------------


def _cholesky(k: Array) -> Array:
    return jax.lax.linalg.cholesky(k, symmetrize_input=False)


def cholesky_with_jitter(k: Float[Array, "N N"]) -> tuple[Float[Array, "N N"], Float[Array, ""]]:
    """Lower Cholesky factor of ``k + jitter I`` with the smallest working jitter.

    The jitter-free factor is tried first; only if it fails does a
    ``lax.while_loop`` try :data:`JITTER_LEVELS` (relative to the mean
    diagonal) in turn, and the matrix is then factorised once more with the
    first level that worked.

    Returns:
        ``(L, jitter)``: the factor (NaN if every level failed) and the absolute
        jitter added to the diagonal.
    """
    n = k.shape[-1]
    scale = jnp.mean(jnp.diagonal(k))
    levels = jnp.asarray(JITTER_LEVELS, dtype=k.dtype)
    eye = jnp.eye(n, dtype=k.dtype)

    def ok(chol: Array) -> Array:
        return jnp.all(jnp.isfinite(jnp.diagonal(chol)))

    def retry(_: None) -> tuple[Array, Array]:
        def cond(carry: tuple[Array, Array]) -> Array:
            i, good = carry
            return ~good & (i < len(JITTER_LEVELS) - 1)

        def body(carry: tuple[Array, Array]) -> tuple[Array, Array]:
            i = carry[0] + 1
            return i, ok(_cholesky(k + levels[i] * scale * eye))

        i, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), jnp.asarray(False)))
        return _cholesky(k + levels[i] * scale * eye), levels[i] * scale

    chol0 = _cholesky(k)
    return jax.lax.cond(ok(chol0), lambda _: (chol0, jnp.zeros((), k.dtype)), retry, None)


def _potri_host(chol: np.ndarray) -> np.ndarray:
    """``K^{-1}`` (lower triangle valid) from lower factors ``[..., N, N]`` via LAPACK potri."""
    from scipy.linalg import lapack

    chol = np.asarray(chol)
    potri = lapack.get_lapack_funcs("potri", (chol,))

    def one(factor: np.ndarray) -> np.ndarray:
        # A C-ordered lower factor is an F-ordered upper factor of the same matrix, and
        # the F-ordered upper result read in C order is the lower triangle: no copies.
        inv, info = potri(factor.T, lower=0)
        return inv.T if info == 0 else np.full(factor.shape, np.nan, dtype=factor.dtype)

    if chol.ndim == 2:
        return one(chol)
    out = np.empty(chol.shape, dtype=chol.dtype)
    for idx in np.ndindex(*chol.shape[:-2]):
        out[idx] = one(chol[idx])
    return out


def _inverse_from_cholesky_xla(chol: Array) -> Array:
    eye = jnp.eye(chol.shape[-1], dtype=chol.dtype)
    return jax.scipy.linalg.cho_solve((chol, True), eye)


def inverse_from_cholesky(chol: Float[Array, "N N"]) -> Float[Array, "N N"]:
    """``(L L^T)^{-1}``; only the lower triangle is guaranteed.

    On CPU with ``N >= POTRI_MIN_N`` this is a host callback to LAPACK
    ``potri`` (``2/3 N^3`` flops; XLA has no equivalent and its triangular
    solves against the identity cost three times as many). Below that size,
    and on other platforms, it stays in XLA (``cho_solve`` against the
    identity): the callback's fixed latency is not worth it for small
    matrices, and on a crowded CPU that latency grows to milliseconds.
    """
    if chol.shape[-1] < POTRI_MIN_N:
        return _inverse_from_cholesky_xla(chol)

    def cpu(c: Array) -> Array:
        return jax.pure_callback(_potri_host, jax.ShapeDtypeStruct(c.shape, c.dtype), c,
                                 vmap_method="broadcast_all")

    return jax.lax.platform_dependent(chol, cpu=cpu, default=_inverse_from_cholesky_xla)


def _mll_value(chol: Array, resid: Array) -> tuple[Array, Array]:
    alpha = jax.scipy.linalg.cho_solve((chol, True), resid)
    n = resid.shape[-1]
    value = -0.5 * jnp.dot(resid, alpha) - jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * n * math.log(2 * math.pi)
    return value, alpha


@jax.custom_vjp
def log_marginal_likelihood(k: Float[Array, "N N"], resid: Float[Array, " N"]) -> Float[Array, ""]:
    """``log N(resid | 0, k)`` with a hand-written gradient.

    The forward pass is one Cholesky (with escalating jitter); the backward pass
    adds one inverse from the factor and returns
    ``dL/dK = 0.5 (alpha alpha^T - K^-1)`` and ``dL/dr = -alpha`` — with the
    ``K`` cotangent in lower-triangular form (off-diagonal entries doubled,
    upper triangle zero), which gives the same gradient for any ``K`` built
    symmetrically from parameters. Forward-mode differentiation is not
    supported; use :func:`log_marginal_likelihood_autodiff` for Hessians.

    Args:
        k: ``[N, N]`` covariance of the observations (kernel plus noise).
        resid: ``[N]`` observations minus the prior mean.

    Returns:
        The log density (NaN only if every jitter level failed).
    """
    chol, _ = cholesky_with_jitter(k)
    return _mll_value(chol, resid)[0]


def _mll_fwd(k: Array, resid: Array) -> tuple[Array, tuple[Array, Array]]:
    chol, _ = cholesky_with_jitter(k)
    value, alpha = _mll_value(chol, resid)
    return value, (chol, alpha)


def _mll_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    chol, alpha = res
    kinv = inverse_from_cholesky(chol)  # lower triangle valid
    n = alpha.shape[-1]
    row = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    grad = (0.5 * g) * (alpha[:, None] * alpha[None, :] - kinv)
    grad = jnp.where(row > col, 2.0 * grad, jnp.where(row == col, grad, 0.0))
    return grad, -g * alpha


log_marginal_likelihood.defvjp(_mll_fwd, _mll_bwd)


def log_marginal_likelihood_autodiff(k: Float[Array, "N N"], resid: Float[Array, " N"]) -> Float[Array, ""]:
    """The same value as :func:`log_marginal_likelihood`, differentiated by JAX.

    The jitter level is chosen without gradient, then the factorisation is
    redone differentiably. Supports any order of forward and reverse mode.
    """
    _, jitter = cholesky_with_jitter(jax.lax.stop_gradient(k))
    chol = _cholesky(k + jax.lax.stop_gradient(jitter) * jnp.eye(k.shape[-1], dtype=k.dtype))
    return _mll_value(chol, resid)[0]
