"""The BNN as a network: its forward pass, its numpyro sites, its input / target scaling.

:class:`MLPApply` is the network of one draw; ``_build_model`` turns a
``_NetConfig`` (everything that fixes the model function) into the numpyro
model whose sites the package docstring lists; ``_Scaling`` maps inputs to
``[0, 1]`` and standardises targets, and ``_fold_scaling`` folds it back into
the first and last layer's parameters; ``_site_dims`` names the DataTree
dimensions of each site.

Shapes: N data points, D inputs, O outputs, S draws.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float
from numpyro.infer.reparam import LocScaleReparam

from priorguard._compile import count_trace
from priorguard.models.base import Data
from priorguard.priors import sites
from priorguard.priors.distributions import Prior
from priorguard.priors.kernels import default_prior
from priorguard.priors.models import BNNModel, Horseshoe, RegularisedHorseshoe
from priorguard.priors.structure import layer_widths

__all__ = ["DepthMixtureApply", "MLPApply"]

_ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "swish": jax.nn.swish,
}


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
    site = f"{base}/w"  # base is sites.layer_prefix(role, i): the leaves of sites.layer_site
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
            base = sites.layer_prefix(p, i)
            w = _weight_site(cfg, base, fan_in, fan_out)
            b = numpyro.sample(f"{base}/b", _expanded(cfg.bias.to_numpyro(f"{base}/b"), (fan_out,)))
            h = h @ w + b
            if i < cfg.depth:
                h = act(h)
        if isinstance(cfg.noise, Prior):
            sigma = numpyro.sample(sites.noise_site(p), _expanded(cfg.noise.to_numpyro(sites.noise_site(p)), (cfg.out_dim,)))
        else:
            sigma = jnp.full((cfg.out_dim,), cfg.noise, dtype=h.dtype)
        with numpyro.plate(sites.observation_plate(p), x.shape[0]):
            numpyro.sample(sites.observation_site(p), dist.Normal(h, sigma).to_event(1), obs=y)

    return model


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
    count_trace("bnn/fold")
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


# --- DataTree dimensions of the sites ---------------------------------------------


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
