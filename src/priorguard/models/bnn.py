"""Bayesian neural networks (numpyro): NUTS, SVI, MAP and deep ensembles.

A :class:`~priorguard.priors.models.BNNModel` spec becomes a multilayer
perceptron with declared priors on its weights and biases, fitted to
:class:`~priorguard.models.base.Data` by :func:`fit_bnn`, which returns a
:class:`BNNPosterior` honouring the :class:`~priorguard.models.base.Posterior`
protocol.

Shapes used throughout:
    N: number of data / query points.   D: input dimension.
    O: output dimension (1 for T and I, the state dimension for W).
    C: chains.   S: posterior draws (per chain in ``samples``; all chains
    pooled in function draws).

The model (``p`` is ``site_prefix``, layers ``i = 0..depth``)::

    x_s = (x - lo) / (hi - lo)                    # feature_ranges, when given
    y_s = (y - mean(y)) / std(y)                  # per output, stored and undone
    p/layer{i}/w  [fan_in, fan_out] ~ weights     # or horseshoe, see below
    p/layer{i}/b  [fan_out]         ~ bias
    h_{i+1} = act(h_i @ w_i + b_i)                # no activation on the last layer
    p/noise       [O]               ~ noise       # std on standardised targets
    p/y           [N, O]            ~ Normal(h_L, noise)

The declared priors are used as written (no fan-in scaling). Hyperpriors
(``{dist = "Normal", loc = 0, scale = {dist = "HalfNormal", ...}}``) are
sampled once per layer as ``p/layer{i}/w/scale``; a Normal weight prior with
hyperpriors is sampled non-centred (``p/layer{i}/w_decentered``).

Simplicity prior (``spec.simplicity``) replaces the weight prior with a
horseshoe, non-centred for NUTS, per layer::

    p/layer{i}/tau     ~ HalfCauchy(global_scale)          # global
    p/layer{i}/lambda  ~ HalfCauchy(1)  [fan_in, fan_out]  # local
    p/layer{i}/w_raw   ~ Normal(0, 1)   [fan_in, fan_out]
    p/layer{i}/w       = w_raw * tau * lambda              # deterministic

and the regularised horseshoe (Piironen & Vehtari 2017) adds a slab
``p/layer{i}/c2 ~ InverseGamma(slab_df / 2, slab_df * slab_scale**2 / 2)`` and
uses ``lambda_tilde = sqrt(c2 lambda^2 / (c2 + tau^2 lambda^2))`` in place of
``lambda``.

Speed prior (``spec.speed``): every depth 0..max_depth is fitted (depth 0 is a
linear model; widths from :func:`~priorguard.priors.structure.layer_widths`),
and ``p(depth | data) ∝ depth_prior(depth) * Z(depth)`` with the evidence ``Z``
approximated per inference method:

    * SVI: the ELBO (64-particle estimate at the fitted guide), a lower bound;
    * MAP, ensemble: Laplace at the best mode, in unconstrained coordinates,
      with a generalised Gauss-Newton curvature for the likelihood and the
      exact Hessian of the prior part (MacKay 1992; Immer et al. 2021);
    * NUTS: the same Laplace approximation at the mode that L-BFGS reaches from
      the lowest-energy draw of each chain (best chain kept).

All of these see one of the ``prod_i width_i!`` (times ``2**width_i`` for tanh)
equivalent relabellings of the hidden units; ``symmetry_correction=True`` adds
the log of that count (MacKay 1992), which over-counts when units are
redundant, so it is off by default. Predictions, densities and
function draws are averaged over depths by ``p(depth | data)`` (Bayesian model
averaging); ``to_datatree()`` describes the most probable depth.

Parallel chains: ``numpyro.set_host_device_count(n)`` must run before JAX
starts (the priorguard CLI does it at start-up); chains then run with
``pmap`` when ``jax.local_device_count() >= chains``, else one after another.
A second fit with the same spec and data shapes compiles nothing.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from priorguard.models.base import as_data
    >>> from priorguard.priors.models import BNNModel
    >>> spec = BNNModel(model="bnn", hidden=[6], noise=0.4,
    ...                 inference={"method": "map", "steps": 150, "restarts": 2})
    >>> x = jnp.linspace(-1.0, 1.0, 40)[:, None]
    >>> post = fit_bnn(spec, as_data(x, jnp.sin(2 * x)), key=jax.random.key(0))
    >>> post.predict(x).mean.shape
    (40, 1)
    >>> post.sample_functions(jax.random.key(1), 3)(x).shape
    (3, 40, 1)
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, PRNGKeyArray
from numpyro.infer.reparam import LocScaleReparam

from priorguard.models import _numpyro_util as nu
from priorguard.models.base import Data, FunctionDraws, Prediction
from priorguard.priors.distributions import Prior
from priorguard.priors.kernels import default_prior
from priorguard.priors.models import (
    BNNModel,
    EnsembleInference,
    Horseshoe,
    MapInference,
    NutsInference,
    RegularisedHorseshoe,
    SviInference,
)
from priorguard.priors.structure import depth_prior, layer_widths

__all__ = [
    "BNN",
    "BNNPosterior",
    "DepthFit",
    "MLPApply",
    "DepthMixtureApply",
    "fit_bnn",
    "bnn_model",
]

_ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "swish": jax.nn.swish,
}

#: L-BFGS steps used to polish the lowest-energy NUTS draw into a mode for Laplace.
_NUTS_LAPLACE_STEPS = 200
#: Monte-Carlo particles of the ELBO used as SVI's evidence.
_ELBO_PARTICLES = 64


# --- the network as a pure function ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class MLPApply:
    """``apply_fn`` of a depth-``depth`` MLP: ``(params, x [N, D]) -> [N, O]``.

    ``params`` holds ``layer{i}/w [fan_in, fan_out]`` and ``layer{i}/b
    [fan_out]`` for ``i = 0..depth`` in original units (input scaling and
    target standardisation folded into the first and last layer); any other
    entry (``noise``) is ignored. Hashable and compared by value, so jitted
    code keyed on it is reused across posteriors of the same structure.
    """

    activation: str
    depth: int

    def __call__(self, params: Mapping[str, Array], x: Float[Array, "N D"]) -> Float[Array, "N O"]:
        act = _ACTIVATIONS[self.activation]
        h = x
        for i in range(self.depth + 1):
            h = h @ params[f"layer{i}/w"] + params[f"layer{i}/b"]
            if i < self.depth:
                h = act(h)
        return h


@dataclasses.dataclass(frozen=True)
class DepthMixtureApply:
    """``apply_fn`` of a draw from a mixture over depths.

    ``params = {"depth": int [], "nets": (params_depth_0, ...), "noise": [O]}``;
    evaluates ``components[depth]`` on ``nets[depth]`` with ``lax.switch``
    (under ``vmap`` every branch runs and one is selected).
    """

    components: tuple[MLPApply, ...]

    def __call__(self, params: Mapping[str, Any], x: Float[Array, "N D"]) -> Float[Array, "N O"]:
        branches = [partial(_call_component, c, k) for k, c in enumerate(self.components)]
        return jax.lax.switch(params["depth"], branches, params["nets"], x)


def _call_component(apply: MLPApply, index: int, nets: tuple[Any, ...], x: Array) -> Array:
    return apply(nets[index], x)


# --- spec -> numpyro model ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _NetConfig:
    """Everything that fixes the model function; hashable (the priors by their JSON)."""

    prefix: str
    in_dim: int
    out_dim: int
    widths: tuple[int, ...]
    activation: str
    priors_key: str
    weights: Prior = dataclasses.field(compare=False, repr=False)
    bias: Prior = dataclasses.field(compare=False, repr=False)
    noise: Prior | float = dataclasses.field(compare=False, repr=False)
    sparsity: Horseshoe | RegularisedHorseshoe | None = dataclasses.field(compare=False, repr=False)

    @property
    def depth(self) -> int:
        return len(self.widths)


def _net_config(spec: BNNModel, prefix: str, in_dim: int, out_dim: int, depth: int) -> _NetConfig:
    noise = spec.noise if spec.noise is not None else default_prior("noise", in_dim)
    if not isinstance(noise, Prior):
        noise = float(noise)
    priors_key = json.dumps(
        {
            "weights": spec.weights.model_dump(),
            "bias": spec.bias.model_dump(),
            "noise": noise.model_dump() if isinstance(noise, Prior) else noise,
            "sparsity": spec.simplicity.model_dump() if spec.simplicity is not None else None,
        },
        sort_keys=True,
    )
    return _NetConfig(
        prefix=prefix,
        in_dim=in_dim,
        out_dim=out_dim,
        widths=tuple(layer_widths(list(spec.hidden), depth)),
        activation=spec.activation,
        priors_key=priors_key,
        weights=spec.weights,
        bias=spec.bias,
        noise=noise,
        sparsity=spec.simplicity,
    )


def _expanded(d: dist.Distribution, shape: tuple[int, ...]) -> dist.Distribution:
    return d.expand(shape).to_event(len(shape))


def _weight_site(cfg: _NetConfig, base: str, fan_in: int, fan_out: int) -> Array:
    site = f"{base}/w"
    shape = (fan_in, fan_out)
    sparsity = cfg.sparsity
    if sparsity is None:
        if cfg.weights.dist == "Normal" and cfg.weights.has_hyperpriors:
            with numpyro.handlers.reparam(config={site: LocScaleReparam(centered=0.0)}):
                return numpyro.sample(site, _expanded(cfg.weights.to_numpyro(site), shape))
        return numpyro.sample(site, _expanded(cfg.weights.to_numpyro(site), shape))
    tau = numpyro.sample(f"{base}/tau", dist.HalfCauchy(sparsity.global_scale))
    lam = numpyro.sample(f"{base}/lambda", _expanded(dist.HalfCauchy(1.0), shape))
    raw = numpyro.sample(f"{base}/w_raw", _expanded(dist.Normal(0.0, 1.0), shape))
    if isinstance(sparsity, RegularisedHorseshoe):
        df, s = sparsity.slab_df, sparsity.slab_scale
        c2 = numpyro.sample(f"{base}/c2", dist.InverseGamma(0.5 * df, 0.5 * df * s * s))
        lam = jnp.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    return numpyro.deterministic(site, raw * tau * lam)


def _build_model(cfg: _NetConfig) -> Any:
    act = _ACTIVATIONS[cfg.activation]
    sizes = (cfg.in_dim, *cfg.widths, cfg.out_dim)
    p = cfg.prefix

    def model(x: Array, y: Array | None = None) -> None:
        h = x
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            base = f"{p}/layer{i}"
            w = _weight_site(cfg, base, fan_in, fan_out)
            b = numpyro.sample(f"{base}/b", _expanded(cfg.bias.to_numpyro(f"{base}/b"), (fan_out,)))
            h = h @ w + b
            if i < cfg.depth:
                h = act(h)
        if isinstance(cfg.noise, Prior):
            sigma = numpyro.sample(f"{p}/noise", _expanded(cfg.noise.to_numpyro(f"{p}/noise"), (cfg.out_dim,)))
        else:
            sigma = jnp.full((cfg.out_dim,), cfg.noise, dtype=h.dtype)
        with numpyro.plate(f"{p}/obs", x.shape[0]):
            numpyro.sample(f"{p}/y", dist.Normal(h, sigma).to_event(1), obs=y)

    return model


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


class _Programs:
    """The model of one structure and its compiled programs (cached per structure)."""

    def __init__(self, cfg: _NetConfig) -> None:
        self.cfg = cfg
        self.model = _build_model(cfg)
        self.name = f"bnn[{cfg.prefix},d={cfg.depth}]"
        self._cache: dict[Any, Any] = {}

    def _get(self, key: Any, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def nuts(self, inf: NutsInference) -> nu.NutsProgram:
        key = ("nuts", inf.warmup, inf.samples, inf.chains, inf.target_accept, inf.max_tree_depth)
        return self._get(key, lambda: nu.NutsProgram(
            self.model, warmup=inf.warmup, samples=inf.samples, chains=inf.chains,
            target_accept=inf.target_accept, max_tree_depth=inf.max_tree_depth, name=self.name + "/nuts"))

    def svi(self, inf: SviInference) -> nu.SviProgram:
        key = ("svi", inf.guide, inf.learning_rate, inf.steps, inf.samples)
        return self._get(key, lambda: nu.SviProgram(
            self.model, guide=inf.guide, learning_rate=inf.learning_rate, steps=inf.steps,
            samples=inf.samples, particles=_ELBO_PARTICLES, name=self.name + "/svi"))

    def mode(self, optimizer: str, steps: int, learning_rate: float) -> nu.ModeProgram:
        key = ("mode", optimizer, steps, learning_rate)
        return self._get(key, lambda: nu.ModeProgram(
            self.model, optimizer=optimizer, steps=steps, learning_rate=learning_rate,
            name=self.name + "/mode"))

    def constrain(self) -> Any:
        return self._get("constrain", lambda: nu.make_constrain(self.model, self.name))

    def laplace(self) -> Any:
        return self._get("laplace", lambda: nu.make_laplace(self.model, self.name))


def _programs(cfg: _NetConfig) -> _Programs:
    return nu.cached_program(("bnn", cfg), lambda: _Programs(cfg))


# --- scaling --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Scaling:
    """``x_s = (x - x_lo) * x_inv_scale``; ``y = y_mean + y_std * y_s``."""

    x_lo: Array  # [D]
    x_inv_scale: Array  # [D]
    y_mean: Array  # [O]
    y_std: Array  # [O]

    @staticmethod
    def from_data(data: Data, feature_ranges: Any) -> _Scaling:
        d = data.x.shape[1]
        dtype = data.x.dtype
        if feature_ranges is None:
            lo = jnp.zeros((d,), dtype)
            inv = jnp.ones((d,), dtype)
        else:
            ranges = np.asarray(feature_ranges, dtype=float)
            if ranges.shape != (d, 2):
                raise ValueError(f"feature_ranges must be [D, 2] = [{d}, 2] (lo, hi per input); got {ranges.shape}")
            if not np.all(np.isfinite(ranges)) or not np.all(ranges[:, 1] > ranges[:, 0]):
                raise ValueError(f"feature_ranges need finite lo < hi for every input; got {ranges.tolist()}")
            lo = jnp.asarray(ranges[:, 0], dtype)
            inv = jnp.asarray(1.0 / (ranges[:, 1] - ranges[:, 0]), dtype)
        y = np.asarray(data.y, dtype=float)
        mean = y.mean(axis=0)
        std = y.std(axis=0)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return _Scaling(lo, inv, jnp.asarray(mean, data.y.dtype), jnp.asarray(std, data.y.dtype))

    def x(self, x: Array) -> Array:
        return (x - self.x_lo) * self.x_inv_scale

    def y(self, y: Array) -> Array:
        return (y - self.y_mean) / self.y_std


@jax.jit
def _fold_scaling(net: dict[str, Array], scaling: _Scaling) -> dict[str, Array]:
    """Standardised-space parameters ``[S, ...]`` -> original units (see :class:`MLPApply`)."""
    nu.count_trace("bnn/fold")
    out = dict(net)
    last = max(int(k[5:].split("/")[0]) for k in net if k.startswith("layer"))
    w0, b0 = out["layer0/w"], out["layer0/b"]
    out["layer0/b"] = b0 - jnp.einsum("d,sdo->so", scaling.x_lo * scaling.x_inv_scale, w0)
    out["layer0/w"] = w0 * scaling.x_inv_scale[None, :, None]
    wl, bl = out[f"layer{last}/w"], out[f"layer{last}/b"]
    out[f"layer{last}/w"] = wl * scaling.y_std
    out[f"layer{last}/b"] = bl * scaling.y_std + scaling.y_mean
    out["noise"] = out["noise"] * scaling.y_std
    return out


jax.tree_util.register_dataclass(
    _Scaling, data_fields=["x_lo", "x_inv_scale", "y_mean", "y_std"], meta_fields=[])


# --- fits -----------------------------------------------------------------------


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


def _symmetry_log_count(widths: Sequence[int], activation: str) -> float:
    """log of the number of weight settings giving the same network (permutations, tanh signs)."""
    out = 0.0
    for h in widths:
        out += math.lgamma(h + 1.0)
        if activation == "tanh":
            out += h * math.log(2.0)
    return out


def _net_params(samples: Mapping[str, Array], cfg: _NetConfig, num: int) -> dict[str, Array]:
    """Flattened ``[C*S, ...]`` network parameters (standardised units) from site draws."""
    p = cfg.prefix
    out: dict[str, Array] = {}
    for i in range(cfg.depth + 1):
        for part in ("w", "b"):
            v = samples[f"{p}/layer{i}/{part}"]
            out[f"layer{i}/{part}"] = v.reshape((num, *v.shape[2:]))
    if isinstance(cfg.noise, Prior):
        v = samples[f"{p}/noise"]
        out["noise"] = v.reshape((num, *v.shape[2:]))
    else:
        dtype = out["layer0/w"].dtype
        out["noise"] = jnp.full((num, cfg.out_dim), cfg.noise, dtype=dtype)
    return out


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
        diagnostics.update(nu.warn_on_diagnostics(
            _posterior_dataset(samples, cfg), stats["diverging"], stacklevel=4))
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
        u = np.asarray(u)
        ok = np.isfinite(u) & (u < 1e29)  # the optimiser reports a non-finite density as 1e30
        if not np.any(ok):
            raise FloatingPointError(
                f"every {inf.method} optimisation at depth {cfg.depth} ended at a non-finite log density;"
                " lower the learning rate or tighten the priors")
        best = int(np.argmin(np.where(ok, u, np.inf)))
        diagnostics["potential"] = float(u[best])
        z_best = jax.tree_util.tree_map(lambda v: v[best], z)
        if isinstance(inf, MapInference):
            z = jax.tree_util.tree_map(lambda v: v[best:best + 1], z)
        elif not np.all(ok):
            warnings.warn(f"{int(np.sum(~ok))} of {inf.members} ensemble members diverged at depth {cfg.depth}"
                          " and were dropped; lower inference.learning_rate", RuntimeWarning, stacklevel=3)
            keep = np.flatnonzero(ok)
            z = jax.tree_util.tree_map(lambda v: v[keep], z)
        samples = jax.tree_util.tree_map(lambda v: v[None], progs.constrain()(z, xs, ys))
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
    nu.count_trace("bnn/moments")
    f = jax.vmap(apply, in_axes=(0, None))(params, x)  # [S, N, O]
    alea = jnp.mean(params["noise"] ** 2, axis=0)  # [O]
    return f.mean(0), f.var(0), jnp.broadcast_to(alea, f.shape[1:])


@partial(jax.jit, static_argnums=0)
def _pointwise_loglik(apply: Any, params: Any, x: Array, y: Array) -> Array:
    """``[S, N]``: log N(y_n | f_s(x_n), noise_s), summed over outputs."""
    nu.count_trace("bnn/loglik")
    f = jax.vmap(apply, in_axes=(0, None))(params, x)
    ll = dist.Normal(f, params["noise"][:, None, :]).log_prob(y[None])
    return ll.sum(-1)


@partial(jax.jit, static_argnums=0)
def _log_predictive(apply: Any, params: Any, x: Array, y: Array) -> Array:
    nu.count_trace("bnn/lpd")
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
        ``draw``; SVI, MAP and ensembles as one chain), ``sample_stats`` (NUTS:
        ``diverging``, ``tree_depth``, ``n_steps``, ``energy``, ``lp``,
        ``acceptance_rate``, ``step_size``), ``log_likelihood`` (pointwise over
        rows, outputs summed, original units; ``az.loo`` runs on it),
        ``posterior_predictive``, ``observed_data``, ``constant_data`` and, under
        a speed prior, ``depth_posterior`` (``prior``, ``log_evidence``,
        ``posterior`` over ``depth``). Variable names are site names with ``/``
        written ``.`` (DataTree forbids ``/``): ``world.layer0.w``.

        Args:
            depth: which depth to describe.
            key: key for the posterior-predictive draws (default: one split off
                the fit's key).
        """
        import arviz as az
        import xarray as xr

        fit = self.fit_at(depth)
        cfg = _net_config(self.spec, self.site_prefix, self.input_dim, self.output_dim, fit.depth)
        key = self._predictive_key if key is None else key
        p = self.site_prefix.replace("/", ".")
        c, s = jax.tree_util.tree_leaves(fit.samples)[0].shape[:2]
        x, y = self.data.x, self.data.y
        n = x.shape[0]
        ll = np.asarray(_pointwise_loglik(fit.apply, fit.draw_params, x, y)).reshape(c, s, n)
        f = jax.vmap(fit.apply, in_axes=(0, None))(fit.draw_params, x)
        eps = jax.random.normal(key, f.shape, f.dtype)
        y_rep = np.asarray(f + eps * fit.draw_params["noise"][:, None, :]).reshape(c, s, n, -1)
        posterior, dims = {}, {}
        for name, v in fit.samples.items():
            var = name.replace("/", ".")
            posterior[var] = np.asarray(v)
            dims[var] = _site_dims(name, np.shape(v)[2:], cfg)
        obs = f"{p}.y"
        dims[obs] = ["obs", "output"]
        dims[f"{p}.x"] = ["obs", "feature"]
        data: dict[str, dict[str, Any]] = {
            "posterior": posterior,
            "posterior_predictive": {obs: y_rep},
            "observed_data": {obs: np.asarray(y)},
            "constant_data": {f"{p}.x": np.asarray(x)},
        }
        if fit.sample_stats is not None:
            st = fit.sample_stats
            steps = st["num_steps"].astype(np.int64)
            data["sample_stats"] = {
                "diverging": st["diverging"].astype(bool),
                "n_steps": steps,
                "tree_depth": np.where(steps > 0, np.floor(np.log2(np.maximum(steps, 1))) + 1, 0).astype(np.int64),
                "energy": st["energy"],
                "lp": -st["potential_energy"],
                "acceptance_rate": st["accept_prob"],
                "step_size": np.broadcast_to(st["step_size"][:, None], st["diverging"].shape).copy(),
            }
        if self.feature_names is not None:
            features: Any = list(self.feature_names)
        elif self.spec.features and len(self.spec.features) == x.shape[1]:
            features = list(self.spec.features)
        else:
            features = np.arange(x.shape[1])
        coords = {
            "obs": np.arange(n),
            "feature": features,
            "output": list(self.output_names) if self.output_names is not None else np.arange(y.shape[1]),
            **{f"hidden{i}": np.arange(w) for i, w in enumerate(fit.widths)},
        }
        dt = az.from_dict(
            data,
            sample_dims=["chain", "draw"],
            coords=coords,
            dims=dims,
            attrs={"/": {
                "model": "bnn",
                "inference": self.method,
                "site_prefix": self.site_prefix,
                "depth": fit.depth,
                "widths": list(fit.widths),
                "activation": self.spec.activation,
                "evidence_method": fit.evidence_method or "",
            }},
        )
        ll_ds = xr.Dataset({obs: (["chain", "draw", "obs"], ll)},
                           coords={"chain": np.arange(c), "draw": np.arange(s), "obs": np.arange(n)})
        dt["log_likelihood"] = xr.DataTree(ll_ds)
        if self.depth_prior_probs is not None:
            ds = xr.Dataset(
                {
                    "prior": ("depth", np.asarray(self.depth_prior_probs)),
                    "log_evidence": ("depth", np.asarray([np.nan if f.log_evidence is None else f.log_evidence
                                                          for f in self.fits])),
                    "posterior": ("depth", np.asarray(self.depth_probs)),
                },
                coords={"depth": [f.depth for f in self.fits]},
            )
            dt["depth_posterior"] = xr.DataTree(ds)
        return dt


def _site_dims(name: str, shape: tuple[int, ...], cfg: _NetConfig) -> list[str]:
    short = name[len(cfg.prefix) + 1:]
    parts = short.split("/")
    if parts[0].startswith("layer"):
        i = int(parts[0][5:])
        dim_in = "feature" if i == 0 else f"hidden{i - 1}"
        dim_out = f"hidden{i}" if i < cfg.depth else "output"
        leaf = "/".join(parts[1:])
        if leaf in ("w", "w_raw", "lambda", "w_decentered") and len(shape) == 2:
            return [dim_in, dim_out]
        if leaf in ("b", "b_decentered") and len(shape) == 1:
            return [dim_out]
    if short == "noise" and len(shape) == 1:
        return ["output"]
    var = name.replace("/", ".")
    return [f"{var}_dim_{k}" for k in range(len(shape))]


def _posterior_dataset(samples: Mapping[str, Array], cfg: _NetConfig) -> Any:
    import xarray as xr

    return xr.Dataset({
        name.replace("/", "."): (["chain", "draw", *_site_dims(name, np.shape(v)[2:], cfg)], np.asarray(v))
        for name, v in samples.items()
    })


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
            default, see the module notes).
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
