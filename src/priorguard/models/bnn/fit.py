"""Fitting a BNN: the compiled programs of a structure, the fit and evidence per depth, :func:`fit_bnn`.

Shapes: N data points, D inputs, O outputs, C chains, S draws per chain.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from priorguard.models.inference import warn_on_diagnostics
from priorguard.models.base import Data
from priorguard.models.bnn.network import (
    MLPApply,
    _fold_scaling,
    _net_config,
    _NetConfig,
    _Scaling,
    _site_dims,
)
from priorguard.models.bnn.posterior import BNNPosterior, DepthFit
from priorguard.models.bnn.programs import _net_params, _programs
from priorguard.models.datatree import posterior_dataset
from priorguard.priors.models import (
    BNNModel,
    EnsembleInference,
    MapInference,
    NutsInference,
    SviInference,
)
from priorguard.priors.structure import depth_prior

__all__ = ["BNN", "bnn_model", "fit_bnn"]

#: L-BFGS steps used to polish the lowest-energy NUTS draw into a mode for Laplace.
_NUTS_LAPLACE_STEPS = 200


# --- compiled programs ----------------------------------------------------------


def bnn_model(spec: BNNModel, *, in_dim: int, out_dim: int, depth: int | None = None,
              site_prefix: str = "world") -> Any:
    """The numpyro model ``model(x [N, D], y [N, O] | None)`` of a spec (scaled units).

    Args:
        spec: the BNN spec.
        in_dim: D.
        out_dim: O.
        depth: hidden layers (default ``len(spec.hidden)``).
        site_prefix: first part of every site name.
    """
    spec = _as_spec(spec)
    depth = len(spec.hidden) if depth is None else depth
    return _programs(_net_config(spec, site_prefix, in_dim, out_dim, depth)).model


# --- the fit at one depth -------------------------------------------------------


def _symmetry_log_count(widths: Sequence[int], activation: str) -> float:
    """log of the number of weight settings giving the same network (permutations, tanh signs)."""
    out = 0.0
    for h in widths:
        out += math.lgamma(h + 1.0)
        if activation == "tanh":
            out += h * math.log(2.0)
    return out


def _posterior_of(samples: Mapping[str, Array], cfg: _NetConfig) -> Any:
    """The ``posterior`` dataset of site draws ``[C, S, ...]`` (for the sampler diagnostics)."""
    return posterior_dataset(samples, {name: _site_dims(name, np.shape(v)[2:], cfg) for name, v in samples.items()}, {})


def _fit_depth(spec: BNNModel, cfg: _NetConfig, xs: Array, ys: Array, scaling: _Scaling,
               key: PRNGKeyArray, *, want_evidence: bool, symmetry_correction: bool) -> DepthFit:
    progs = _programs(cfg)
    inf = spec.inference
    n = ys.shape[0]
    stats: dict[str, np.ndarray] | None = None
    diagnostics: dict[str, float] = {}
    log_z: float | None = None
    method: str | None = None

    if isinstance(inf, NutsInference):
        out = progs.nuts(inf).run(key, xs, ys)
        samples = out["samples"]
        stats = {k: np.asarray(v) for k, v in out["stats"].items()}
        stats["step_size"] = np.asarray(out["step_size"])
        diagnostics.update(warn_on_diagnostics(
            _posterior_of(samples, cfg), stats["diverging"], stacklevel=4))
        if want_evidence:
            z, u = progs.mode("lbfgs", _NUTS_LAPLACE_STEPS, 1.0).from_points(out["best_z"], xs, ys)
            best = int(jnp.nanargmin(u))
            lz, floored = progs.laplace()(jax.tree_util.tree_map(lambda v: v[best], z), xs, ys)
            log_z, method = float(lz), "laplace"
            diagnostics["laplace_floored_eigenvalues"] = float(floored)
    elif isinstance(inf, SviInference):
        out = progs.svi(inf).run(key, xs, ys, want_elbo=want_evidence)
        losses = np.asarray(out["losses"])
        elbo = float(out["elbo"]) if want_evidence else 0.0
        diagnostics["final_loss"] = float(losses[-1])
        if not np.isfinite(losses[-1]) or not np.isfinite(elbo):
            raise FloatingPointError(
                f"SVI diverged at depth {cfg.depth} (final loss {losses[-1]}); lower"
                f" inference.learning_rate (now {inf.learning_rate}) or tighten the priors")
        samples = jax.tree_util.tree_map(lambda v: v[None], out["samples"])
        if want_evidence:
            log_z, method = elbo, "elbo"
    elif isinstance(inf, MapInference | EnsembleInference):
        if isinstance(inf, MapInference):
            prog = progs.mode(inf.optimizer, inf.steps, inf.learning_rate)
            z, u = prog.from_key(key, xs, ys, inf.restarts)
        else:
            prog = progs.mode("adam", inf.steps, inf.learning_rate)
            z, u = prog.from_key(key, xs, ys, inf.members)
            z, u, spent, converged = _until_converged(prog, z, u, xs, ys, inf)
            diagnostics["optimiser_steps"] = float(spent)
            diagnostics["converged"] = float(converged)
        u = np.asarray(u)
        ok = np.isfinite(u) & (u < 1e29)  # the optimiser reports a non-finite density as 1e30
        if not np.any(ok):
            raise FloatingPointError(
                f"every {inf.method} optimisation at depth {cfg.depth} ended at a non-finite log density;"
                " lower the learning rate or tighten the priors")
        best = int(np.argmin(np.where(ok, u, np.inf)))
        diagnostics["potential"] = float(u[best])
        z = jax.tree_util.tree_map(np.asarray, z)  # slicing on the host: no program per leaf shape
        z_best = jax.tree_util.tree_map(lambda v: v[best], z)
        if isinstance(inf, MapInference):
            z = jax.tree_util.tree_map(lambda v: v[best:best + 1], z)
        elif not np.all(ok):
            warnings.warn(f"{int(np.sum(~ok))} of {inf.members} ensemble members diverged at depth {cfg.depth}"
                          " and were dropped; lower inference.learning_rate", RuntimeWarning, stacklevel=3)
            keep = np.flatnonzero(ok)
            z = jax.tree_util.tree_map(lambda v: v[keep], z)
        samples = jax.tree_util.tree_map(lambda v: np.asarray(v)[None], progs.constrain()(z, xs, ys))
        if want_evidence:
            lz, floored = progs.laplace()(z_best, xs, ys)
            log_z, method = float(lz), "laplace"
            diagnostics["laplace_floored_eigenvalues"] = float(floored)
    else:  # pragma: no cover - the spec's discriminator rules this out
        raise TypeError(f"unknown inference {type(inf).__name__}")

    if log_z is not None:
        # Evidence of the original targets: undo the standardisation's Jacobian.
        log_z -= n * float(jnp.sum(jnp.log(scaling.y_std)))
        if symmetry_correction and cfg.depth > 0:
            log_z += _symmetry_log_count(cfg.widths, cfg.activation)
            method = f"{method}+symmetry"
    num = int(jax.tree_util.tree_leaves(samples)[0].shape[0] * jax.tree_util.tree_leaves(samples)[0].shape[1])
    draw_params = _fold_scaling(_net_params(samples, cfg, num), scaling)
    return DepthFit(
        depth=cfg.depth,
        widths=cfg.widths,
        samples=samples,
        sample_stats=stats,
        draw_params=draw_params,
        log_evidence=log_z,
        evidence_method=method,
        diagnostics=diagnostics,
        apply=MLPApply(cfg.activation, cfg.depth),
    )


def _until_converged(prog: Any, z: Any, u: Any, xs: Any, ys: Any,
                     inf: EnsembleInference) -> tuple[Any, Any, int, bool]:
    """Goes on with ``prog`` (rounds of ``inf.steps``) from ``z`` until no finite member improves
    its potential by more than ``inf.tolerance * (1 + |potential|)`` in a round, or ``inf.max_steps``.

    Data without noise (a deterministic world) never converge in this sense: the fitted noise
    shrinks and the density grows round after round. The budget then ends the fit, long after
    the depths' evidence has separated; ``converged`` says which of the two ended it.

    Returns ``(z, u, steps spent, converged)``.
    """
    spent = inf.steps
    u = np.asarray(u)
    while spent + inf.steps <= inf.max_steps:
        z_next, u_next = prog.from_points(z, xs, ys)
        spent += inf.steps
        u_next = np.asarray(u_next)
        finite = (u < 1e29) & (u_next < 1e29)
        gain = np.where(finite, u - u_next, 0.0)
        z, u = z_next, u_next
        if np.all(gain <= inf.tolerance * (1.0 + np.abs(u_next))):
            return z, u, spent, True
    return z, u, spent, False


# --- entry points ---------------------------------------------------------------


def _as_spec(spec: Any) -> BNNModel:
    if isinstance(spec, BNNModel):
        return spec
    if isinstance(spec, Mapping):
        return BNNModel.model_validate({"model": "bnn", **spec})
    raise TypeError(f"spec must be a BNNModel (or a mapping of its fields), got {type(spec).__name__}")


def fit_bnn(spec: BNNModel | Mapping[str, Any], data: Data, *, key: PRNGKeyArray,
            site_prefix: str = "world", feature_ranges: Any = None,
            symmetry_correction: bool = False, feature_names: Sequence[str] | None = None,
            output_names: Sequence[str] | None = None) -> BNNPosterior:
    """Fits a Bayesian MLP to ``data`` as the spec says.

    Args:
        spec: a :class:`~priorguard.priors.models.BNNModel` (or a mapping of its
            fields, validated here).
        data: ``x [N, D]``, ``y [N, O]``.
        key: PRNG key, consumed (one subkey per depth and one for the
            posterior-predictive draws of :meth:`BNNPosterior.to_datatree`).
        site_prefix: first part of every site name (``"world/layer0/w"``).
        feature_ranges: ``[D, 2]`` (lo, hi) per input; inputs are scaled to
            ``[0, 1]`` by them. None leaves inputs as they are.
        symmetry_correction: add the log of the number of equivalent hidden-unit
            relabellings to each depth's evidence (speed prior only; off by
            default, see the notes of :mod:`priorguard.models.bnn`).
        feature_names: names of the ``D`` inputs, the DataTree's ``feature``
            coordinate (None: the spec's ``features`` when they match, else indices).
        output_names: names of the ``O`` outputs, its ``output`` coordinate (None: indices).

    Returns:
        The :class:`BNNPosterior`.

    Raises:
        ValueError: data or feature ranges of the wrong shape, non-finite data,
            or a spec whose ``features`` do not match ``D``.
        FloatingPointError: the optimisation diverged.
    """
    spec = _as_spec(spec)
    if not isinstance(data, Data):
        raise TypeError(f"data must be priorguard.models.base.Data (see as_data), got {type(data).__name__}")
    if not isinstance(site_prefix, str) or not site_prefix or site_prefix.startswith("/") or site_prefix.endswith("/"):
        raise ValueError(f"site_prefix must be a non-empty name without leading/trailing '/', got {site_prefix!r}")
    n, d = data.x.shape
    o = data.y.shape[1]
    if n < 1 or d < 1 or o < 1:
        raise ValueError(f"data needs N, D, O >= 1; got x{tuple(data.x.shape)} y{tuple(data.y.shape)}")
    if spec.features is not None and len(spec.features) != d:
        raise ValueError(f"spec.features names {len(spec.features)} inputs but data.x has D = {d} columns")
    if not (bool(jnp.all(jnp.isfinite(data.x))) and bool(jnp.all(jnp.isfinite(data.y)))):
        raise ValueError("data.x and data.y must be finite")
    for what, names, size in (("feature_names", feature_names, d), ("output_names", output_names, o)):
        if names is not None and len(names) != size:
            raise ValueError(f"{what} has {len(names)} names for {size} columns: {list(names)}")
    scaling = _Scaling.from_data(data, feature_ranges)
    xs, ys = scaling.x(data.x), scaling.y(data.y)

    if spec.speed is not None:
        prior = depth_prior(list(spec.hidden), in_dim=d, out_dim=o, max_depth=spec.speed.max_depth,
                            strength=spec.speed.strength)
        depths = [dd for dd, _ in prior]
        prior_probs: tuple[float, ...] | None = tuple(pp for _, pp in prior)
    else:
        depths = [len(spec.hidden)]
        prior_probs = None
    key_pred, *keys = jax.random.split(key, len(depths) + 1)
    fit_list = []
    for depth, k in zip(depths, keys):  # a loop, not a generator: warnings point at the caller
        fit_list.append(_fit_depth(
            spec, _net_config(spec, site_prefix, d, o, depth), xs, ys, scaling, k,
            want_evidence=prior_probs is not None, symmetry_correction=symmetry_correction))
    fits = tuple(fit_list)
    if prior_probs is None:
        probs: tuple[float, ...] = (1.0,)
    else:
        log_post = np.array([
            (math.log(pp) if pp > 0 else -np.inf) + (f.log_evidence if f.log_evidence is not None else np.nan)
            for pp, f in zip(prior_probs, fits)
        ])
        if not np.any(np.isfinite(log_post)):
            raise FloatingPointError(f"no depth has a finite evidence: {log_post.tolist()}")
        log_post = np.where(np.isfinite(log_post), log_post, -np.inf)
        w = np.exp(log_post - log_post.max())
        probs = tuple(float(v) for v in w / w.sum())
    return BNNPosterior(spec=spec, site_prefix=site_prefix, fits=fits, depth_prior_probs=prior_probs,
                        depth_probs=probs, data=data, _scaling=scaling, _predictive_key=key_pred,
                        feature_names=None if feature_names is None else tuple(feature_names),
                        output_names=None if output_names is None else tuple(output_names))


class BNN:
    """The model object of the ``fit(data, *, key) -> Posterior`` contract.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from priorguard.models.base import as_data
        >>> bnn = BNN({"hidden": [6], "noise": 0.4, "inference": {"method": "map", "steps": 150, "restarts": 2}},
        ...           site_prefix="terminal")
        >>> x = jnp.linspace(-1.0, 1.0, 40)[:, None]
        >>> post = bnn.fit(as_data(x, x**2), key=jax.random.key(0))
        >>> sorted(post.samples())[:2]
        ['terminal/layer0/b', 'terminal/layer0/w']
    """

    def __init__(self, spec: BNNModel | Mapping[str, Any], *, site_prefix: str = "world",
                 feature_ranges: Any = None, symmetry_correction: bool = False) -> None:
        self.spec = _as_spec(spec)
        self.site_prefix = site_prefix
        self.feature_ranges = feature_ranges
        self.symmetry_correction = symmetry_correction

    def fit(self, data: Data, *, key: PRNGKeyArray) -> BNNPosterior:
        """Fits the spec to ``data``; see :func:`fit_bnn`."""
        return fit_bnn(self.spec, data, key=key, site_prefix=self.site_prefix,
                       feature_ranges=self.feature_ranges, symmetry_correction=self.symmetry_correction)
