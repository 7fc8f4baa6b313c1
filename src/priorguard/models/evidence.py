"""Model evidence: the Laplace approximation of ``log p(y)`` and BIC.

Laplace: ``log p(y) ≈ -U(u*) + P/2 log 2π - 1/2 log det H`` at a mode ``u*`` in
unconstrained space, ``U`` the potential (negative log joint, log-det-Jacobian
included, so the integral is over the coordinates it is Gaussian in) and ``H``
its Hessian there. Eigenvalues of ``H`` below an eigenvalue floor (flat
directions, a mode on the box edge) are raised to it and counted. There are two
ways to the Hessian, and one eigen-decomposition (:func:`floored_log_det`)
behind both:

* :func:`laplace_log_evidence`: central differences of a compiled analytic
  gradient on the host (``2P`` calls, no new compilation); the GP kernel
  structure search (:mod:`priorguard.models.gp.search`) uses it with its floor
  ``1e-6``.
* :func:`make_laplace`: one jitted program over a numpyro model, with a
  generalised Gauss-Newton or an exact Hessian; the BNN depth evidence uses it
  with its floor ``1e-8``.

The floor is an argument without a default: each caller states its own.

BIC: ``log p(y | theta*) - k/2 log N`` (:func:`bic`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.flatten_util import ravel_pytree
from numpyro.handlers import block, seed, substitute, trace
from numpyro.infer.util import constrain_fn, potential_energy

from priorguard._compile import count_trace

__all__ = ["bic", "finite_difference_hessian", "floored_log_det", "laplace_log_evidence", "make_laplace"]

Model = Callable[..., Any]


def floored_log_det(h: Any, eigen_floor: float, *, xp: Any = np) -> tuple[Any, Any]:
    """``log det`` of the symmetrised ``h`` with eigenvalues below ``eigen_floor`` raised to it.

    Args:
        h: ``[P, P]`` Hessian (a NumPy array, or a traced JAX array with ``xp=jnp``).
        eigen_floor: the smallest eigenvalue kept.
        xp: ``numpy`` (on the host; a non-finite ``h`` then counts as all eigenvalues at the
            floor) or ``jax.numpy`` (inside a traced program).

    Returns:
        ``(log det, eigenvalues [P])``; ``sum(eigenvalues < eigen_floor)`` were raised.
    """
    h = 0.5 * (h + h.T)
    if xp is np:
        eig = np.linalg.eigvalsh(h) if np.all(np.isfinite(h)) else np.full(h.shape[0], eigen_floor)
    else:
        eig = xp.linalg.eigvalsh(h)
    return xp.sum(xp.log(xp.maximum(eig, eigen_floor))), eig


def _laplace(neg_log_joint: Any, num_params: int, log_det: Any) -> Any:
    return -neg_log_joint + 0.5 * num_params * math.log(2.0 * math.pi) - 0.5 * log_det


def finite_difference_hessian(grad: Callable[[np.ndarray], np.ndarray], u: np.ndarray, step: float) -> np.ndarray:
    """``[P, P]`` Hessian by central differences of ``grad`` (``2P`` calls), column by column."""
    p = u.shape[0]
    h = np.empty((p, p))
    for j in range(p):
        e = np.zeros(p)
        e[j] = step
        h[:, j] = (grad(u + e) - grad(u - e)) / (2 * step)
    return h


def laplace_log_evidence(value_and_grad: Callable[[np.ndarray], tuple[Any, Any]], u_flat: np.ndarray, *,
                         eigen_floor: float, step: float) -> tuple[float, int]:
    """Laplace ``log p(y)`` at the mode ``u_flat`` from a compiled potential and its gradient.

    The Hessian is taken by central differences of the analytic gradient: ``2P``
    calls of the already compiled objective (a ``jax.hessian`` would compile a
    new program).

    Args:
        value_and_grad: ``u [P] -> (U(u), dU/du [P])``, the negative log joint in
            unconstrained space.
        u_flat: ``[P]`` the mode.
        eigen_floor: eigenvalues of the Hessian below this are raised to it.
        step: central-difference step (unconstrained units).

    Returns:
        ``(log evidence, number of eigenvalues raised to the floor)``.
    """
    value, _ = value_and_grad(u_flat)
    p = u_flat.shape[0]
    if p == 0:
        return -float(value), 0
    h = finite_difference_hessian(lambda u: np.asarray(value_and_grad(u)[1]), u_flat, step)
    log_det, eig = floored_log_det(h, eigen_floor)
    return _laplace(float(value), p, float(log_det)), int(np.sum(eig < eigen_floor))


def make_laplace(model: Model, name: str, *, eigen_floor: float, hessian: str = "ggn"
                 ) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted Laplace approximation of log p(y) at an unconstrained mode ``z``.

    ``log Z ≈ -U(z) + P/2 log 2π - 1/2 log det H`` with ``U`` the potential
    (log-Jacobian included, so the integral is over the unconstrained
    coordinates, where the identity holds for any reparameterisation) and ``H``
    its curvature at ``z``:

    * ``hessian="ggn"`` (default): generalised Gauss-Newton for the likelihood
      plus the exact Hessian of the prior part, as in MacKay (1992) and Immer
      et al. (2021). Every observed site must be (an independent) Normal; its
      Fisher information in ``(loc, log scale)`` is ``diag(1/scale^2, 2)``.
      Positive semi-definite wherever the prior part is convex, so no spurious
      volume from non-convex directions of a network's likelihood.
    * ``hessian="exact"``: ``jax.hessian(U)``.

    Eigenvalues of ``H`` below ``eigen_floor`` are raised to it.

    The returned function maps ``(z, x, y)`` to ``(log_evidence,
    number_of_floored_eigenvalues)``; ``x`` and ``y`` are the model's arguments
    (for ``"ggn"`` the prior part is the model with its observed sites blocked).
    """
    if hessian not in ("ggn", "exact"):
        raise ValueError(f"hessian must be 'ggn' or 'exact', got {hessian!r}")

    def observed_normal(z: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        params = constrain_fn(model, (x, y), {}, z)
        tr = trace(substitute(seed(model, rng_seed=0), data=params)).get_trace(x, y)
        locs, log_scales = [], []
        for site_name, site in tr.items():
            if site["type"] != "sample" or not site["is_observed"]:
                continue
            fn = site["fn"]
            while hasattr(fn, "base_dist"):
                fn = fn.base_dist
            if not isinstance(fn, numpyro.distributions.Normal):
                raise TypeError(f"hessian='ggn' needs Normal observations; {site_name!r} is {type(fn).__name__}")
            shape = jnp.shape(site["value"])
            locs.append(jnp.broadcast_to(fn.loc, shape).reshape(-1))
            log_scales.append(jnp.log(jnp.broadcast_to(fn.scale, shape)).reshape(-1))
        return jnp.concatenate(locs), jnp.concatenate(log_scales)

    def run(z: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        count_trace(name + "/laplace")
        flat, unravel = ravel_pytree(z)

        def u(f: jax.Array) -> jax.Array:
            return potential_energy(model, (x, y), {}, unravel(f))

        if hessian == "exact":
            h = jax.hessian(u)(flat)
        else:
            prior_part = block(model, hide_fn=lambda msg: bool(msg.get("is_observed", False)))

            def u_prior(f: jax.Array) -> jax.Array:
                return potential_energy(prior_part, (x, y), {}, unravel(f))

            def outputs(f: jax.Array) -> jax.Array:
                loc, log_scale = observed_normal(unravel(f), x, y)
                return jnp.concatenate([loc, log_scale])

            m = jax.eval_shape(outputs, flat).shape[0]
            jac = (jax.jacrev if m <= flat.shape[0] else jax.jacfwd)(outputs)(flat)  # [2M, P]
            loc, log_scale = observed_normal(unravel(flat), x, y)
            fisher = jnp.concatenate([jnp.exp(-2.0 * log_scale), jnp.full_like(log_scale, 2.0)])
            h = jac.T @ (fisher[:, None] * jac) + jax.hessian(u_prior)(flat)
        log_det, eig = floored_log_det(h, eigen_floor, xp=jnp)
        return _laplace(u(flat), flat.shape[0], log_det), jnp.sum(eig < eigen_floor)

    return jax.jit(run)


def bic(log_likelihood: float, num_parameters: int, num_observations: int) -> float:
    """Bayesian information criterion on the log-evidence scale: ``log p(y | theta*) - k/2 log N``.

    Args:
        log_likelihood: ``log p(y | theta*)`` at the fitted parameters.
        num_parameters: ``k``, the free parameters (summed over independent outputs).
        num_observations: ``N``.
    """
    return float(log_likelihood) - 0.5 * num_parameters * math.log(num_observations)
