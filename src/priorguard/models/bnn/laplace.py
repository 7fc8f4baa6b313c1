"""The DataTree draws of a mode-based BNN fit (MAP, ensemble): a mixture of last-layer Laplace approximations.

A MAP fit is one network and an ensemble a few (5 by default): as ``chain x draw`` they are
too few for ArviZ's PSIS-LOO, whose Pareto tail needs more draws than that, and ``az.loo``,
``az.loo_pit`` and ``az.compare`` fail on them. Their DataTree therefore holds draws from a
stated approximation around the modes: an equally weighted mixture of Laplace approximations,
one per member (Eschenhagen et al., 2021, "Mixtures of Laplace approximations for improved
post-hoc uncertainty in deep learning"), each over the output layer alone (last-layer
Laplace: Kristiadi et al., 2020; Daxberger et al., 2021, "Laplace Redux"):

* every site but the output layer's latent weights and bias (``w``, or ``w_raw`` under a
  horseshoe, ``w_decentered`` under a weight hyperprior, and ``b``) stays at the member's
  value: hidden layers, noise, horseshoe scales and hyperpriors;
* those get a Gaussian at the member's values whose precision is the Hessian of the negative
  log joint in them (with the network's output linear in them and a Normal likelihood, the
  likelihood part is its Gauss-Newton matrix exactly; the prior part is exact); eigenvalues
  below :data:`MIN_CURVATURE` (directions that neither the data nor the prior pin) are
  raised to it and counted in the DataTree's ``laplace_floored_eigenvalues``;
* each member gets ``ceil(DRAWS / members)`` draws; deterministic sites are recomputed at
  every draw.

These are the DataTree's draws only: the fit's predictions and function draws use the members
as they are. The supports of the output layer's sites are real (the spec requires it of
weight and bias priors), so constrained and unconstrained coordinates agree there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray
from numpyro.handlers import seed, substitute, trace
from numpyro.infer.util import log_density

from priorguard._compile import count_trace
from priorguard.models.bnn.network import _fold_scaling, _NetConfig, _Scaling
from priorguard.priors import sites

__all__ = ["DRAWS", "MIN_CURVATURE", "last_layer_laplace"]

#: Draws in all (at least; rounded up to a multiple of the members).
DRAWS = 100
#: The least curvature (1 / variance) a Laplace direction keeps.
MIN_CURVATURE = 1e-2
#: The leaves of the output layer's latent sites that the Gaussian covers.
_LEAVES = ("w", "w_raw", "w_decentered", "b")


def _site_kinds(model: Any, xs: Array, ys: Array) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(latent sites, latent and deterministic sites)`` of the model."""
    tr = trace(seed(model, rng_seed=0)).get_trace(xs, ys)
    latent = tuple(n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"])
    kept = tuple(n for n, s in tr.items()
                 if (s["type"] == "sample" and not s["is_observed"]) or s["type"] == "deterministic")
    return latent, kept


def _program(model: Any, name: str, latent: tuple[str, ...], covered: tuple[str, ...],
             kept: tuple[str, ...], per_member: int) -> Any:
    """Compiled ``(latent {site: [M, ...]}, xs, ys, key) -> (sites {site: [M, K, ...]}, floored [M])``."""

    def one(values: Mapping[str, Array], xs: Array, ys: Array, key: Array) -> tuple[dict[str, Array], Array]:
        fixed = {k: values[k] for k in latent if k not in covered}
        flat0, unravel = ravel_pytree({k: values[k] for k in covered})

        def potential(flat: Array) -> Array:
            return -log_density(model, (xs, ys), {}, {**fixed, **unravel(flat)})[0]

        h = jax.hessian(potential)(flat0)
        evals, evecs = jnp.linalg.eigh(0.5 * (h + h.T))
        keep = evals >= MIN_CURVATURE  # NaN is raised too
        evals = jnp.where(keep, evals, MIN_CURVATURE)
        z = jax.random.normal(key, (per_member, flat0.shape[0]), flat0.dtype)
        draws = flat0 + (z / jnp.sqrt(evals)) @ evecs.T  # [K, P]: covariance evecs diag(1/evals) evecs^T

        def sites_at(flat: Array) -> dict[str, Array]:
            tr = trace(substitute(model, data={**fixed, **unravel(flat)})).get_trace(xs, ys)
            return {k: tr[k]["value"] for k in kept}

        return jax.vmap(sites_at)(draws), jnp.sum(~keep)

    def run(values: Mapping[str, Array], xs: Array, ys: Array, key: Array) -> tuple[dict[str, Array], Array]:
        count_trace(name + "/last_layer_laplace")
        m = next(iter(values.values())).shape[0]
        return jax.vmap(one, in_axes=(0, None, None, 0))(values, xs, ys, jax.random.split(key, m))

    return jax.jit(run)


def last_layer_laplace(programs: Any, cfg: _NetConfig, samples: Mapping[str, Array], scaling: _Scaling,
                       x: Array, y: Array, key: PRNGKeyArray) -> tuple[dict[str, Array], dict[str, Array],
                                                                      dict[str, Any]]:
    """Draws from the mixture of last-layer Laplace approximations at the members in ``samples``.

    Args:
        programs: the structure's compiled programs (:func:`priorguard.models.bnn.fit._programs`).
        cfg: the network configuration of the fit's depth.
        samples: site name -> ``[1, M, ...]`` member values (standardised units).
        scaling: the fit's input and target scaling.
        x: ``[N, D]`` training inputs, ``y``: ``[N, O]`` targets (original units).
        key: consumed.

    Returns:
        ``(samples {site: [1, M * K, ...]}, draw_params {layer{i}/w, layer{i}/b, noise: [M * K, ...]}
        in original units, attrs)``.
    """
    from priorguard.models.bnn.programs import _net_params

    xs, ys = scaling.x(x), scaling.y(y)
    model = programs.model
    latent, kept = _site_kinds(model, xs, ys)
    kept = tuple(k for k in kept if k in samples)
    out_layer = sites.layer_prefix(cfg.prefix, cfg.depth) + "/"
    covered = tuple(n for n in latent if n.startswith(out_layer) and n[len(out_layer):] in _LEAVES)
    members = int(np.shape(next(iter(samples.values())))[1])
    per_member = max(1, math.ceil(DRAWS / members))
    run = programs._get(("last_layer_laplace", latent, covered, kept, per_member),
                        lambda: _program(model, programs.name, latent, covered, kept, per_member))
    values = {k: jnp.asarray(samples[k])[0] for k in latent}
    drawn, floored = run(values, xs, ys, key)
    total = members * per_member
    out = {k: jnp.reshape(v, (1, total, *v.shape[2:])) for k, v in drawn.items()}
    draw_params = _fold_scaling(_net_params(out, cfg, total), scaling)
    attrs = {
        "posterior_draws": (f"mixture of last-layer Laplace approximations at the {members} fitted"
                            f" network(s), {per_member} draws each (see priorguard.models.bnn.laplace)"),
        "laplace_draws_per_member": per_member,
        "laplace_floored_eigenvalues": int(np.sum(np.asarray(floored))),
    }
    return out, draw_params, attrs
