"""Laplace draws of a MAP GP's hyperparameters, so that ArviZ's LOO sees a posterior sample.

A MAP fit is one point; ``az.loo`` and ``az.compare`` need draws. The Laplace
approximation puts a Gaussian at the MAP point in the unconstrained coordinates the
optimiser used, with the inverse Hessian of the negative log joint as covariance
(the Hessian by central differences of the hand-written gradient: the outputs are
independent, so each parameter is perturbed in every output at once and the Hessian is
``O`` blocks of ``P x P``). Eigenvalues below :data:`MIN_CURVATURE` (a direction the
data and the prior leave flat, as type-II ML can) are raised to it, and counted.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from priorguard.models.gp.data import Prepared
from priorguard.models.gp.kernels import GPProgram
from priorguard.models.gp.objective import map_objective, objective_inputs, theta_from_sites

__all__ = ["MIN_CURVATURE", "laplace_loo_draws", "laplace_samples"]

#: The least curvature (1 / variance, unconstrained units) a Laplace direction keeps.
MIN_CURVATURE = 1e-2
#: Central-difference step in unconstrained units.
STEP = 1e-4


def _output_index(objective: Any) -> np.ndarray:
    """``[O, P]``: where output o's p-th unconstrained parameter sits in the flat vector
    (``ravel_pytree`` order: sites sorted by name, each ``[O, ...]`` leaf row-major)."""
    o, offset, blocks = objective.num_outputs, 0, []
    for name in sorted(objective.sites):
        size = o * int(np.prod(objective.sites[name][0], dtype=int))
        blocks.append(offset + np.arange(size).reshape(o, -1))
        offset += size
    assert offset == objective.size
    return np.concatenate(blocks, axis=1)


def laplace_samples(program: GPProgram, prep: Prepared, u_flat: np.ndarray, *, use_prior: bool, num_draws: int,
                    key: PRNGKeyArray) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """``num_draws`` hyperparameter draws from the Laplace approximation at ``u_flat``.

    Returns:
        ``(samples {site: [S, O, ...]} constrained, log_joint [S], info)``; ``info`` has
        ``laplace_flat_directions`` (eigenvalues raised to :data:`MIN_CURVATURE`).
    """
    objective = map_objective(program, prep.num_outputs, use_prior=use_prior)
    x, y = objective_inputs(program, prep)
    u = np.asarray(u_flat, np.float64)
    index = _output_index(objective)  # [O, P]
    o, p = index.shape
    hess = np.zeros((o, p, p))
    for j in range(p):
        e = np.zeros_like(u)
        e[index[:, j]] = STEP
        g_plus = np.asarray(objective.value_and_grad(jnp.asarray(u + e), x, y)[1])
        g_minus = np.asarray(objective.value_and_grad(jnp.asarray(u - e), x, y)[1])
        hess[:, :, j] = ((g_plus - g_minus) / (2 * STEP))[index]
    hess = 0.5 * (hess + np.swapaxes(hess, 1, 2))
    evals, evecs = np.linalg.eigh(hess)
    flat = int(np.sum(~(evals >= MIN_CURVATURE)))
    evals = np.where(evals >= MIN_CURVATURE, evals, MIN_CURVATURE)  # NaN too
    scale = evecs / np.sqrt(evals)[:, None, :]  # [O, P, P]: u = u_map + scale @ z
    z = np.asarray(jax.random.normal(key, (num_draws, o, p), jnp.float64))
    draws = np.repeat(u[None], num_draws, axis=0)
    for k in range(o):
        draws[:, index[k]] = u[index[k]] + z[:, k] @ scale[k].T
    # one compiled call per draw (no new program for a batch of them)
    per_draw = [objective.constrain(jnp.asarray(d)) for d in draws]
    values = {name: np.stack([np.asarray(v[name]) for v in per_draw]) for name in per_draw[0]}
    log_joint = -np.asarray([float(objective.value(jnp.asarray(d), x, y)) for d in draws])
    return values, log_joint, {"laplace_flat_directions": flat, "laplace_draws": num_draws}


def laplace_loo_draws(state: Any, prep: Prepared, record: Any, num_draws: int, key: PRNGKeyArray
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """A MAP fit's Laplace draws and the exact LOO moments at each, per output.

    Returns:
        ``(samples {site: [S, O, ...]}, log_joint [S], attrs, (resid, var) [S, O, N])``, the
        moments in model units (:func:`~priorguard.models.gp.loo.loo_density` gives the densities).
    """
    from priorguard.models.gp.loo import loo_from_theta

    samples, lp, info = laplace_samples(state.program, prep, record.optimizer["u_flat"],
                                        use_prior=record.method == "map", num_draws=num_draws, key=key)
    theta = theta_from_sites(state.program, samples, (num_draws, prep.num_outputs))
    resid, var = loo_from_theta(state.program, moments=True)(theta, state.x, state.y, state.y_scale)
    info["posterior_draws"] = "Laplace approximation at the MAP point (unconstrained space)"
    return samples, lp, info, (np.asarray(resid), np.asarray(var))
