"""Pathwise posterior draws of a GP (Wilson et al., 2020).

A random-feature prior draw (features for every kernel family, see
:mod:`priorguard.models.gp.features`) plus ``k(x, X) K^-1 (y - f(X) - eps)``,
returned as :class:`~priorguard.models.base.FunctionDraws` whose ``apply_fn``
(:class:`ExactDrawFn`) serves exact and sparse GPs alike.

Shapes: n draws, O outputs, N training (or M inducing) inputs, D input columns.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import count_trace
from priorguard.models.gp.kernels import GPProgram
from priorguard.models.gp.linalg import map_unbatched
from priorguard.models.gp.state import ExactGPState

__all__ = ["ExactDrawFn", "basis_params", "exact_draw_params"]


@functools.partial(jax.jit, static_argnames=("n", "per_block", "batch"))
def exact_draw_params(state: ExactGPState, key: PRNGKeyArray, n: int, per_block: int, batch: int) -> dict[str, Any]:
    """Pathwise-conditioning parameters of ``n`` draws (leaves ``[n, O, ...]``)."""
    count_trace("gp/draws")
    program, kernel = state.program, state.program.kernel
    k_idx, k_draw = jax.random.split(key)
    num_samples, num_outputs = state.alpha.shape[:2]
    idx = jax.random.choice(k_idx, num_samples, (n,), p=state.weights)
    keys = jax.random.split(k_draw, (n, num_outputs))
    feats = kernel.num_features(per_block)

    def prior_part(theta: Any, y: Array, k: PRNGKeyArray) -> dict[str, Any]:
        kf, kw, ke = jax.random.split(k, 3)
        fparams = kernel.sample_features(theta, kf, per_block)
        w = jax.random.normal(kw, (feats,), dtype=state.x.dtype)
        f_train = kernel.eval_features(theta, fparams, state.x, per_block) @ w
        noise_var = theta[program.noise.site] ** 2
        if kernel.has_white():
            noise_var = noise_var + kernel.gram_diag(theta, state.x, white=True) - kernel.gram_diag(
                theta, state.x, white=False)
        eps = jnp.sqrt(noise_var) * jax.random.normal(ke, y.shape, dtype=state.x.dtype)
        resid = y - program.mean_value(theta) - f_train - eps
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
    if state.grouped:
        # K^-1 r summed over an input's rows is A^-1 rbar: the system on the group averages
        # (state.chol) times the residuals' group averages (see ExactGPState.basis)
        size = state.basis.shape[0]
        sums = jax.ops.segment_sum(jnp.moveaxis(resid, -1, 0), state.inverse, num_segments=size)
        resid = jnp.moveaxis(sums, 0, -1) / jnp.where(state.counts > 0, state.counts, 1.0)

    def solve(chol: Array, r: Array) -> Array:
        return jax.scipy.linalg.cho_solve((chol, True), r)

    if num_samples == 1:  # one factor per output, all draws as right-hand sides
        v = map_unbatched(lambda c, r: solve(c, r.T).T, state.chol[0], jnp.swapaxes(resid, 0, 1))
        parts["v"] = jnp.swapaxes(v, 0, 1)
    else:
        parts["v"] = jax.lax.map(lambda a: map_unbatched(solve, state.chol[a[0]], a[1]), (idx, resid))
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


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _apply_exact(program: GPProgram, per_block: int, columns: tuple[int, ...], params: Mapping[str, Any],
                 x: Array) -> Array:
    basis = params["basis"]
    x_fit = basis["x_fit"]
    xs = (jnp.asarray(x, dtype=x_fit.dtype)[:, jnp.asarray(columns)] - basis["low"]) / basis["scale"]
    kernel = program.kernel
    per_output = {k: v for k, v in params.items() if k != "basis"}

    def one(p: Mapping[str, Any], xf: Array) -> Array:
        f = kernel.eval_features(p["theta"], p["features"], xs, per_block) @ p["w"]
        f = f + kernel.gram(p["theta"], xs, xf, same=False) @ p["v"]
        return f + program.mean_value(p["theta"])

    if x_fit.ndim == 2:  # exact GP: basis inputs shared by all outputs
        out = jax.vmap(one, in_axes=(0, None), out_axes=1)(per_output, x_fit)
    else:  # sparse GP: inducing inputs per output [O, M, D]
        out = jax.vmap(one, in_axes=(0, 0), out_axes=1)(per_output, x_fit)
    return out * basis["y_scale"] + basis["y_mean"]
