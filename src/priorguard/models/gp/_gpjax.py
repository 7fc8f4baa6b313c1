"""The GPJax twin of a compiled kernel: cross-checks (tests) and the benchmark baseline.

This is the one module that touches GPJax's API (GPJax changes it at every
minor release; it is pinned to 1.0.0). The hot paths of
:mod:`priorguard.models.gp` are written in plain JAX rather than routed through
GPJax objects (function draws need their random-feature parameters as arrays
stacked over draws; GPJax's ``sample_approx`` returns a closure, shares one
frequency set across all draws and covers only kernels with a spectral
density), but every kernel must agree entry for entry with GPJax's definition
of the same kernel: :func:`to_gpjax_kernel` builds the twin and the tests
compare the two Gram matrices for every kernel kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from priorguard.models.gp.kernels import Kernel, KernelNode

__all__ = ["gpjax_conjugate_mll", "gpjax_fit_ard_rbf_scipy", "gpjax_gram", "to_gpjax_kernel"]


def to_gpjax_kernel(tree: Kernel, theta: Mapping[str, Any]) -> Any:
    """The GPJax 1.0 kernel equal to ``tree`` at hyperparameters ``theta``."""
    import gpjax as gpx

    if isinstance(tree, KernelNode):
        kernels = [to_gpjax_kernel(t, theta) for t in tree.terms]
        cls = gpx.kernels.SumKernel if tree.op == "sum" else gpx.kernels.ProductKernel
        return cls(kernels=kernels)
    th = {h.name: jnp.asarray(theta[h.site], dtype=jnp.float64) for h in tree.hypers}
    dims = list(tree.dims)
    kind = tree.kind
    ctor = {
        "rbf": gpx.kernels.RBF, "matern12": gpx.kernels.Matern12, "matern32": gpx.kernels.Matern32,
        "matern52": gpx.kernels.Matern52,
    }
    if kind in ctor:
        return ctor[kind](active_dims=dims, lengthscale=th["lengthscale"], variance=th["variance"])
    if kind == "rational_quadratic":
        return gpx.kernels.RationalQuadratic(active_dims=dims, lengthscale=th["lengthscale"],
                                             variance=th["variance"], alpha=th["alpha"])
    if kind == "periodic":
        return gpx.kernels.Periodic(active_dims=dims, lengthscale=th["lengthscale"], variance=th["variance"],
                                    period=th["period"])
    if kind == "linear":
        return gpx.kernels.Linear(active_dims=dims, variance=th["variance"])
    if kind == "polynomial":
        return gpx.kernels.Polynomial(active_dims=dims, degree=tree.degree, shift=th["shift"],
                                      variance=th["variance"])
    if kind == "white":
        return gpx.kernels.White(active_dims=dims, variance=th["variance"])
    raise ValueError(kind)


def gpjax_gram(tree: Kernel, theta: Mapping[str, Any], x1: Array, x2: Array) -> Array:
    """GPJax's cross-covariance of the twin kernel (a dense ``[N1, N2]`` array)."""
    return jnp.asarray(to_gpjax_kernel(tree, theta).cross_covariance(x1, x2))


def gpjax_conjugate_mll(tree: Kernel, theta: Mapping[str, Any], noise: float, x: Array, y: Array) -> Array:
    """GPJax's ``conjugate_mll`` for a zero-mean GP with Gaussian noise std ``noise``."""
    import gpjax as gpx

    prior = gpx.gps.Prior(mean_function=gpx.mean_functions.Zero(), kernel=to_gpjax_kernel(tree, theta))
    model = prior * gpx.likelihoods.Gaussian(obs_stddev=jnp.asarray(noise, dtype=jnp.float64))
    return gpx.objectives.conjugate_mll(model, gpx.Dataset(X=x, y=y.reshape(-1, 1)))


def gpjax_fit_ard_rbf_scipy(x: Array, y: Array, *, lengthscale: Any, variance: float, noise: float,
                            max_iters: int = 500) -> tuple[dict[str, np.ndarray], float]:
    """Fits an ARD-RBF GP with GPJax's ``fit_scipy`` (no hyperpriors; the benchmark baseline).

    Returns:
        ``({"lengthscale", "variance", "noise"}, log marginal likelihood at the optimum)``.
    """
    import gpjax as gpx

    kernel = gpx.kernels.RBF(lengthscale=jnp.asarray(lengthscale, dtype=jnp.float64),
                             variance=jnp.asarray(variance, dtype=jnp.float64))
    prior = gpx.gps.Prior(mean_function=gpx.mean_functions.Zero(), kernel=kernel)
    model = prior * gpx.likelihoods.Gaussian(obs_stddev=jnp.asarray(noise, dtype=jnp.float64))
    data = gpx.Dataset(X=x, y=y.reshape(-1, 1))
    fitted, _ = gpx.fit_scipy(model=model, objective=lambda m, d: -gpx.objectives.conjugate_mll(m, d),
                              train_data=data, max_iters=max_iters, verbose=False)
    val = gpx.parameters.val
    params = {
        "lengthscale": np.asarray(val(fitted.prior.kernel.lengthscale)),
        "variance": np.asarray(val(fitted.prior.kernel.variance)),
        "noise": np.asarray(val(fitted.likelihood.obs_stddev)),
    }
    return params, float(gpx.objectives.conjugate_mll(fitted, data))
