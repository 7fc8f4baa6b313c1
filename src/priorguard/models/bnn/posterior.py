"""A fitted BNN: the fit at each depth, predictions, function draws and its ArviZ DataTree.

Shapes: N query points, D inputs, O outputs, C chains, S draws (per chain in
``samples``; all chains pooled in ``draw_params`` and function draws).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import count_trace
from priorguard.models.base import Data, FunctionDraws, Prediction
from priorguard.models.bnn.network import DepthMixtureApply, MLPApply, _net_config, _Scaling, _site_dims
from priorguard.models.datatree import (
    SAMPLE_DIMS,
    arviz_attrs,
    nuts_sample_stats,
    observation_groups,
    posterior_dataset,
    sample_stats_dataset,
)
from priorguard.priors.models import BNNModel

__all__ = ["BNNPosterior", "DepthFit"]

#: Draws in a DataTree's ``prior`` group.
PRIOR_DRAWS = 100


def _prior_draws(cfg: Any, samples: dict[str, Any], scaling: _Scaling, x: Array, key: PRNGKeyArray,
                 n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``[1, n, ...]`` draws from the prior of the sites in ``samples`` that the model samples,
    and the data each draw gives at the training inputs ``x``, ``[1, n, N, O]`` in the targets' units."""
    from numpyro.infer import Predictive

    from priorguard.models.bnn.network import _build_model
    from priorguard.priors.sites import observation_site

    drawn = Predictive(_build_model(cfg), num_samples=n)(key, scaling.x(x))
    y = np.asarray(drawn[observation_site(cfg.prefix)]) * np.asarray(scaling.y_std) + np.asarray(scaling.y_mean)
    return {k: np.asarray(v)[None] for k, v in drawn.items() if k in samples}, y[None]


@dataclasses.dataclass(frozen=True, eq=False)
class DepthFit:
    """The fit at one depth.

    Attributes:
        depth: hidden layers.
        widths: their widths.
        samples: site name -> ``[C, S, ...]`` constrained draws (standardised
            units; SVI, MAP and ensembles have ``C = 1``).
        sample_stats: NUTS statistics ``[C, S]`` (``diverging``, ``num_steps``,
            ``energy``, ``potential_energy``, ``accept_prob``) and ``step_size
            [C]``; None for other methods.
        draw_params: ``layer{i}/w``, ``layer{i}/b`` and ``noise`` with a leading
            ``C * S`` axis, in original units (ready for :class:`MLPApply`).
        log_evidence: approximate ``log p(y | x, depth)`` in original units
            (None when not computed), see :attr:`evidence_method`.
        evidence_method: ``"elbo"`` or ``"laplace"`` (+ ``"+symmetry"``).
        diagnostics: figures such as ``min_ess_bulk``, ``max_rhat``,
            ``divergences`` (NUTS), ``final_loss`` (SVI), ``potential`` (modes).
        apply: the network function of one draw.
    """

    depth: int
    widths: tuple[int, ...]
    samples: dict[str, Array]
    sample_stats: dict[str, np.ndarray] | None
    draw_params: dict[str, Array]
    log_evidence: float | None
    evidence_method: str | None
    diagnostics: dict[str, float]
    apply: MLPApply

    @property
    def num_draws(self) -> int:
        return int(self.draw_params["noise"].shape[0])


# --- the posterior --------------------------------------------------------------


@partial(jax.jit, static_argnums=1)
def _pick_draws(key: PRNGKeyArray, n: int, draw_params: dict[str, Array]) -> dict[str, Array]:
    """``n`` of the S posterior samples (without replacement when ``n <= S``), in one program."""
    num = draw_params["noise"].shape[0]
    idx = jax.random.choice(key, num, (n,), replace=n > num)
    return jax.tree_util.tree_map(lambda v: v[idx], draw_params)


@partial(jax.jit, static_argnums=1)
def _pick_mixture_draws(key: PRNGKeyArray, n: int, depth_probs: Array,
                        fits: tuple[dict[str, Array], ...]) -> dict[str, Any]:
    """``n`` draws of a depth mixture: a depth from ``depth_probs``, then a sample of it."""
    key_depth, *keys = jax.random.split(key, len(fits) + 1)
    depth_index = jax.random.choice(key_depth, len(fits), (n,), p=depth_probs)
    nets = []
    for k, draw_params in zip(keys, fits):
        idx = jax.random.randint(k, (n,), 0, draw_params["noise"].shape[0])
        nets.append(jax.tree_util.tree_map(lambda v, i=idx: v[i], draw_params))
    noise = jnp.stack([net["noise"] for net in nets])[depth_index, jnp.arange(n)]
    return {"depth": depth_index.astype(jnp.int32), "nets": tuple(nets), "noise": noise}


@partial(jax.jit, static_argnums=0)
def _moments(apply: Any, params: Any, x: Array) -> tuple[Array, Array, Array]:
    count_trace("bnn/moments")
    f = jax.vmap(apply, in_axes=(0, None))(params, x)  # [S, N, O]
    alea = jnp.mean(params["noise"] ** 2, axis=0)  # [O]
    return f.mean(0), f.var(0), jnp.broadcast_to(alea, f.shape[1:])


@partial(jax.jit, static_argnums=0)
def _pointwise_loglik(apply: Any, params: Any, x: Array, y: Array) -> Array:
    """``[S, N]``: log N(y_n | f_s(x_n), noise_s), summed over outputs."""
    count_trace("bnn/loglik")
    f = jax.vmap(apply, in_axes=(0, None))(params, x)
    ll = dist.Normal(f, params["noise"][:, None, :]).log_prob(y[None])
    return ll.sum(-1)


@partial(jax.jit, static_argnums=0)
def _log_predictive(apply: Any, params: Any, x: Array, y: Array) -> Array:
    count_trace("bnn/lpd")
    ll = _pointwise_loglik(apply, params, x, y)
    return jax.scipy.special.logsumexp(ll, axis=0) - math.log(ll.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class BNNPosterior:
    """A fitted BNN (one depth, or a mixture over depths under a speed prior).

    Attributes:
        spec: the spec it was fitted from.
        site_prefix: first part of every site name (``"world"``).
        fits: one :class:`DepthFit` per depth considered.
        depth_prior_probs: the speed prior over those depths (None without one).
        depth_probs: ``p(depth | data)`` per fit (``(1.0,)`` for a single depth).
        data: the training data (original units).
    """

    spec: BNNModel
    site_prefix: str
    fits: tuple[DepthFit, ...]
    depth_prior_probs: tuple[float, ...] | None
    depth_probs: tuple[float, ...]
    data: Data
    _scaling: _Scaling = dataclasses.field(repr=False)
    _predictive_key: Any = dataclasses.field(repr=False)
    #: names of the ``D`` inputs and ``O`` outputs in the DataTree (None: indices)
    feature_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None

    # -- Posterior protocol ------------------------------------------------------

    @property
    def input_dim(self) -> int:
        return int(self.data.x.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.data.y.shape[1])

    @property
    def method(self) -> str:
        return self.spec.inference.method

    @property
    def depth_posterior(self) -> dict[int, float] | None:
        """``{depth: p(depth | data)}`` under a speed prior, else None."""
        if self.depth_prior_probs is None:
            return None
        return {f.depth: p for f, p in zip(self.fits, self.depth_probs)}

    @property
    def map_depth(self) -> int:
        """The most probable depth (the only one without a speed prior)."""
        return self.fits[int(np.argmax(self.depth_probs))].depth

    def fit_at(self, depth: int | None = None) -> DepthFit:
        """The :class:`DepthFit` at ``depth`` (default: the most probable)."""
        depth = self.map_depth if depth is None else depth
        for f in self.fits:
            if f.depth == depth:
                return f
        raise KeyError(f"no fit at depth {depth}; fitted depths are {[f.depth for f in self.fits]}")

    def samples(self, depth: int | None = None) -> dict[str, Array]:
        """Site name -> ``[C, S, ...]`` draws at ``depth`` (standardised target units)."""
        return self.fit_at(depth).samples

    def _active(self) -> list[tuple[DepthFit, float]]:
        return [(f, p) for f, p in zip(self.fits, self.depth_probs) if p > 0.0]

    def _check_x(self, x: Any) -> Array:
        x = jnp.asarray(x, dtype=self.data.x.dtype)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"x must be [N, {self.input_dim}], got {tuple(x.shape)}")
        return x

    def predict(self, x: Float[Array, "N D"]) -> Prediction:
        """Predictive mean, epistemic and aleatoric variance ``[N, O]`` at ``x [N, D]``.

        Under a depth posterior the moments are those of the mixture: the spread
        of the depths' means counts as epistemic.
        """
        x = self._check_x(x)
        parts = [(p, _moments(f.apply, f.draw_params, x)) for f, p in self._active()]
        if len(parts) == 1:
            return Prediction(*parts[0][1])
        mean = sum(p * m for p, (m, _, _) in parts)
        second = sum(p * (e + m**2) for p, (m, e, _) in parts)
        alea = sum(p * a for p, (_, _, a) in parts)
        return Prediction(mean, jnp.maximum(second - mean**2, 0.0), alea)

    def log_predictive_density(self, x: Float[Array, "N D"], y: Float[Array, "N O"]) -> Float[Array, " N"]:
        """``log p(y_n | x_n, data)`` per point ``[N]`` (outputs jointly), averaged over draws and depths."""
        x = self._check_x(x)
        y = jnp.asarray(y, dtype=self.data.y.dtype)
        if y.ndim == 1 and self.output_dim == 1:
            y = y[:, None]
        if y.shape != (x.shape[0], self.output_dim):
            raise ValueError(f"y must be [N, O] = [{x.shape[0]}, {self.output_dim}], got {tuple(y.shape)}")
        terms = [math.log(p) + _log_predictive(f.apply, f.draw_params, x, y) for f, p in self._active()]
        return terms[0] if len(terms) == 1 else jax.scipy.special.logsumexp(jnp.stack(terms), axis=0)

    def sample_functions(self, key: PRNGKeyArray, n: int) -> FunctionDraws:
        """``n`` posterior network draws (original units), callable at any input.

        Without a depth posterior, the draws are ``n`` of the posterior samples
        (without replacement when ``n <= S``). With one, each draw first picks
        a depth from ``p(depth | data)``, then a sample of that depth; the
        params then hold every depth's network and ``depth`` selects one
        (:class:`DepthMixtureApply`). ``params["noise"] [n, O]`` is each draw's
        observation-noise standard deviation.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if len(self.fits) == 1:
            f = self.fits[0]
            return FunctionDraws(params=_pick_draws(key, n, f.draw_params), apply_fn=f.apply)
        params = _pick_mixture_draws(key, n, jnp.asarray(self.depth_probs), tuple(f.draw_params for f in self.fits))
        return FunctionDraws(params=params, apply_fn=DepthMixtureApply(tuple(f.apply for f in self.fits)))

    def to_datatree(self, depth: int | None = None, *, key: PRNGKeyArray | None = None) -> Any:
        """An ArviZ ``xarray.DataTree`` of the fit at ``depth`` (default: most probable).

        Groups: ``posterior`` (every latent and deterministic site, ``chain`` x
        ``draw``; SVI, MAP and ensembles as one chain; MAP and ensembles hold draws
        from a mixture of last-layer Laplace approximations at their networks, too few
        for PSIS-LOO as they are: see :mod:`priorguard.models.bnn.laplace` and the
        ``posterior_draws`` attribute), ``sample_stats`` (NUTS:
        ``diverging``, ``tree_depth``, ``n_steps``, ``energy``, ``lp``,
        ``acceptance_rate``, ``step_size``), ``log_likelihood`` (pointwise over
        rows and outputs, the observed data's dims, original units; ``az.loo`` and ``az.loo_pit`` run on it),
        ``posterior_predictive``, ``observed_data``, ``constant_data``, ``prior``
        (draws of the sampled sites from their priors, as ``posterior``),
        ``prior_predictive`` (the data each prior draw gives at the training inputs) and, under
        a speed prior, ``depth_posterior`` (``prior``, ``log_evidence``,
        ``posterior`` over ``depth``). Variable names are site names with ``/``
        written ``.`` (DataTree forbids ``/``): ``world.layer0.w``.

        Args:
            depth: which depth to describe.
            key: key for the posterior-predictive draws (default: one split off
                the fit's key).
        """
        import xarray as xr

        fit = self.fit_at(depth)
        cfg = _net_config(self.spec, self.site_prefix, self.input_dim, self.output_dim, fit.depth)
        key = self._predictive_key if key is None else key
        x, y = self.data.x, self.data.y
        samples, draw_params, extra = fit.samples, fit.draw_params, {}
        if self.method in ("map", "ensemble"):  # too few draws for PSIS: Laplace draws around the modes
            from priorguard.models.bnn.programs import _programs
            from priorguard.models.bnn.laplace import last_layer_laplace

            samples, draw_params, extra = last_layer_laplace(_programs(cfg), cfg, fit.samples, self._scaling, x, y,
                                                             jax.random.fold_in(key, 1))
        c, s = jax.tree_util.tree_leaves(samples)[0].shape[:2]
        n = x.shape[0]
        f = jax.vmap(fit.apply, in_axes=(0, None))(draw_params, x)
        # per (obs, output), the observed data's dims: the outputs are independent given the weights
        sd = np.asarray(draw_params["noise"])[:, None, :]
        ll = (-0.5 * np.log(2 * np.pi * sd**2) - 0.5 * ((np.asarray(y)[None] - np.asarray(f)) / sd) ** 2
              ).reshape(c, s, n, -1)
        eps = jax.random.normal(key, f.shape, f.dtype)
        y_rep = np.asarray(f + eps * draw_params["noise"][:, None, :]).reshape(c, s, n, -1)
        if self.feature_names is not None:
            features: Any = list(self.feature_names)
        elif self.spec.features and len(self.spec.features) == x.shape[1]:
            features = list(self.spec.features)
        else:
            features = np.arange(x.shape[1])
        outputs = list(self.output_names) if self.output_names is not None else np.arange(y.shape[1])
        named = {"feature": features, "output": outputs,
                 **{f"hidden{i}": np.arange(w) for i, w in enumerate(fit.widths)}}
        dims = {name: _site_dims(name, np.shape(v)[2:], cfg) for name, v in samples.items()}
        coords: dict[str, Any] = {"chain": np.arange(c), "draw": np.arange(s)}
        for name, v in samples.items():  # each dimension once, in order of first use
            for dim, size in zip(dims[name], np.shape(v)[2:]):
                coords.setdefault(dim, named[dim] if dim in named else np.arange(size))
        observations = observation_groups(self.site_prefix, np.asarray(x), np.asarray(y), ll, y_rep,
                                          output_coord=outputs, input_dim="feature", input_coord=features)
        groups = {"posterior": posterior_dataset(samples, dims, coords),
                  **{g: observations[g] for g in ("posterior_predictive", "observed_data", "constant_data")}}
        if fit.sample_stats is not None:
            groups["sample_stats"] = sample_stats_dataset(nuts_sample_stats(fit.sample_stats))
        prior, prior_y = _prior_draws(cfg, samples, self._scaling, x, jax.random.fold_in(key, 2), PRIOR_DRAWS)
        groups["prior"] = posterior_dataset(prior, {k: dims[k] for k in prior},
                                            {k: v for k, v in coords.items() if k not in SAMPLE_DIMS})
        ppc = observations["posterior_predictive"]
        groups["prior_predictive"] = xr.Dataset(
            {name: (var.dims, prior_y) for name, var in ppc.data_vars.items()},
            coords={**{k: v for k, v in ppc.coords.items() if k not in SAMPLE_DIMS}, "chain": [0],
                    "draw": np.arange(PRIOR_DRAWS)})
        for name, ds in groups.items():  # the attributes ArviZ writes on the groups it builds
            ds.attrs = arviz_attrs([] if "data" in name else SAMPLE_DIMS)
        groups["log_likelihood"] = observations["log_likelihood"]
        if self.depth_prior_probs is not None:
            groups["depth_posterior"] = xr.Dataset(
                {
                    "prior": ("depth", np.asarray(self.depth_prior_probs)),
                    "log_evidence": ("depth", np.asarray([np.nan if f.log_evidence is None else f.log_evidence
                                                          for f in self.fits])),
                    "posterior": ("depth", np.asarray(self.depth_probs)),
                },
                coords={"depth": [f.depth for f in self.fits]},
            )
        dt = xr.DataTree.from_dict(groups)
        dt.attrs = {
            "model": "bnn",
            "inference": self.method,
            "site_prefix": self.site_prefix,
            "depth": fit.depth,
            "widths": list(fit.widths),
            "activation": self.spec.activation,
            "evidence_method": fit.evidence_method or "",
            **extra,
        }
        return dt
