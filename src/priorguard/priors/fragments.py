"""Priors compiled to numpyro model fragments with stable site names.

Site names are ``{role}/kernel/{param}`` for a base kernel,
``{role}/kernel/terms/{i}/{param}`` inside sums and products (nested as deep
as the expression), ``{role}/noise`` for observation noise, and
``{role}/layer{i}/w`` / ``{role}/layer{i}/b`` for network weights (with
``{role}/tau`` and ``{role}/layer{i}/lambda`` under a horseshoe). A hyperprior
on a parameter adds ``{site}/{param}`` (``terminal/kernel/lengthscale/scale``).
The same spec always gives the same names, so posteriors line up across runs.

Each fragment is a plain function that calls ``numpyro.sample``; run it under
handlers or :class:`numpyro.infer.Predictive`.

Example:
    >>> import jax
    >>> from numpyro.infer import Predictive
    >>> from priorguard.priors.kernels import parse_kernel
    >>> k = parse_kernel({"kind": "sum", "terms": [{"kind": "rbf"}, {"kind": "linear"}]})
    >>> draws = Predictive(lambda: kernel_fragment(k, dim=2, role="terminal"), num_samples=3)(jax.random.key(0))
    >>> sorted(draws)
    ['terminal/kernel/terms/0/lengthscale', 'terminal/kernel/terms/0/variance', 'terminal/kernel/terms/1/variance']
    >>> draws['terminal/kernel/terms/0/lengthscale'].shape
    (3, 2)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpyro

from priorguard.priors.distributions import Prior
from priorguard.priors.kernels import KERNEL_PARAMS, CompositeKernel, _KernelBase


def sample_param(site: str, prior: Prior | float, shape: tuple[int, ...] = ()) -> Any:
    """Samples one parameter at ``site`` (fixed numbers are returned as constants).

    Args:
        site: the stable site name.
        prior: the declared prior, or a fixed value.
        shape: batch shape of the parameter (e.g. ``(D,)`` for ARD lengthscales).

    Returns:
        The sampled (or fixed) value with ``shape``.
    """
    if isinstance(prior, Prior):
        d = prior.to_numpyro(site)
        if shape:
            d = d.expand(shape).to_event(len(shape))
        return numpyro.sample(site, d)
    return jnp.full(shape, float(prior)) if shape else jnp.asarray(float(prior))


def kernel_dims(kernel: _KernelBase, dim: int) -> int:
    """How many inputs a base kernel sees."""
    return len(kernel.active_dims) if kernel.active_dims is not None else dim


def kernel_fragment(kernel: Any, *, dim: int, role: str, path: str = "kernel") -> dict[str, Any]:
    """Samples every hyperparameter of a fixed kernel; returns a nested dict.

    Args:
        kernel: a base or composite kernel spec.
        dim: number of model features (before ``active_dims``).
        role: ``terminal``, ``instrumental`` or ``world`` (the site prefix).
        path: site path below the role (recursion).

    Returns:
        ``{"kind": ..., param: value, ...}`` or ``{"kind": "sum", "terms": [...]}``.
    """
    if isinstance(kernel, CompositeKernel):
        return {
            "kind": kernel.kind,
            "terms": [
                kernel_fragment(t, dim=dim, role=role, path=f"{path}/terms/{i}") for i, t in enumerate(kernel.terms)
            ],
        }
    d = kernel_dims(kernel, dim)
    out: dict[str, Any] = {"kind": kernel.kind}
    for param in KERNEL_PARAMS[kernel.kind]:
        shape = (d,) if param == "lengthscale" and getattr(kernel, "ard", False) else ()
        out[param] = sample_param(f"{role}/{path}/{param}", kernel.prior_of(param, d), shape)
    return out


def noise_fragment(noise: Prior | float | None, *, dim: int, role: str, outputs: int = 1) -> Any:
    """Samples the observation-noise std (one per output when ``outputs > 1``)."""
    from priorguard.priors.kernels import default_prior

    prior = default_prior("noise", dim) if noise is None else noise
    return sample_param(f"{role}/noise", prior, (outputs,) if outputs > 1 else ())
