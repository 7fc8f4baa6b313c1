"""The GPJax twin of a compiled kernel: cross-checks (tests), the benchmark baseline, and the
export of a fitted exact GP (`export_exact`, behind ``GPPosterior.to_gpjax``).

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
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from priorguard.models.gp.kernels import Kernel, KernelLeaf, KernelNode

__all__ = ["GPJaxExport", "export_exact", "gpjax_conjugate_mll", "gpjax_fit_ard_rbf_scipy", "gpjax_gram",
           "to_gpjax_kernel"]


def to_gpjax_kernel(tree: Kernel, theta: Mapping[str, Any]) -> Any:
    """The GPJax 1.0 kernel equal to ``tree`` at hyperparameters ``theta``."""
    import gpjax as gpx

    if isinstance(tree, KernelLeaf) and tree.reflect:
        raise ValueError(f"an even {tree.kind} kernel (kernel.even) has no GPJax counterpart")
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


@dataclass(frozen=True)
class GPJaxExport:
    """A fitted exact GP's output as GPJax 1.0 objects, in model units, with the maps to raw units.

    Attributes:
        model: the ``gpx.gps.ConjugateModel`` (GPJax's conjugate posterior: prior times a Gaussian
            likelihood) at the fit's hyperparameters.
        dataset: the ``gpx.Dataset`` it conditions on: inputs scaled to the unit cube, targets standardised.
        columns: the raw input columns the GP reads; ``low`` and ``scale`` map them to the unit cube.
        y_mean, y_scale: the targets' standardisation (raw = model * y_scale + y_mean).
    """

    model: Any
    dataset: Any
    columns: tuple[int, ...]
    low: np.ndarray
    scale: np.ndarray
    y_mean: float
    y_scale: float

    def model_inputs(self, x: Any) -> Array:
        """Raw inputs ``[M, D]`` (every column of the training data) -> the model's unit-cube inputs."""
        x = jnp.asarray(x, dtype=jnp.float64)
        return (x[:, jnp.asarray(self.columns)] - self.low) / self.scale

    def predict(self, x: Any) -> tuple[Array, Array]:
        """GPJax's latent predictive mean and variance ``[M]`` at raw inputs, in raw units."""
        dist = self.model.predict(self.model_inputs(x), self.dataset, covariance="diagonal")
        return dist.mean * self.y_scale + self.y_mean, dist.variance * self.y_scale**2


def export_exact(state: Any, *, output: int = 0, sample: int | None = None) -> GPJaxExport:
    """GPJax 1.0 objects equal to one output of a fitted exact GP (see `GPJaxExport`).

    Args:
        state: the posterior's ``ExactGPState``.
        output: which output (a GP of several outputs is one GP per output).
        sample: which hyperparameter sample; required when the fit kept several (NUTS), whose
            predictions mix them and so match no single GPJax model.

    Raises:
        ValueError: a NUTS fit without ``sample``, an index out of range, an even kernel, or a
            kernel with a white term (priorguard counts it as noise, GPJax as latent variance).
    """
    import gpjax as gpx

    s_count, o_count = state.alpha.shape[:2]
    if sample is None:
        if s_count > 1:
            raise ValueError(f"this posterior mixes {s_count} hyperparameter samples (NUTS): pass sample=0 .."
                             f" {s_count - 1}; a GPJax model holds one")
        sample = 0
    if not 0 <= sample < s_count:
        raise ValueError(f"sample must be in 0 .. {s_count - 1}, got {sample}")
    if not 0 <= output < o_count:
        raise ValueError(f"output must be in 0 .. {o_count - 1}, got {output}")
    program = state.program
    if program.kernel.has_white():
        raise ValueError("a kernel with a white term has no exact GPJax counterpart (priorguard counts white as"
                         " observation noise)")
    theta = {k: jnp.asarray(v[sample, output], dtype=jnp.float64) for k, v in state.theta.items()}
    mean_fn = (gpx.mean_functions.Zero() if program.mean_constant is None
               else gpx.mean_functions.Constant(constant=theta[program.mean_constant.site]))
    # the jitter priorguard's Cholesky factor was made with (0 unless the Gram matrix needed one):
    # the diagonal of L L^T beyond the kernel's and the noise's
    if state.grouped:  # the factor is over the unique inputs: its jitter as recorded
        jitter = max(float(state.jitter[sample, output]), 0.0)
    else:
        x = jnp.asarray(state.x, jnp.float64)
        chol = jnp.asarray(state.chol[sample, output])
        extra = jnp.sum(chol**2, axis=1) - jnp.diagonal(program.kernel.gram(theta, x, x, same=True))
        jitter = max(float(jnp.mean(extra - theta[program.noise.site] ** 2)), 0.0)
    prior = gpx.gps.Prior(mean_function=mean_fn, kernel=to_gpjax_kernel(program.kernel, theta), jitter=jitter)
    model = prior * gpx.likelihoods.Gaussian(obs_stddev=theta[program.noise.site])
    dataset = gpx.Dataset(X=jnp.asarray(state.x, jnp.float64), y=jnp.asarray(state.y[:, output:output + 1],
                                                                             jnp.float64))
    return GPJaxExport(model=model, dataset=dataset, columns=tuple(state.columns), low=np.asarray(state.low),
                       scale=np.asarray(state.scale), y_mean=float(state.y_mean[output]),
                       y_scale=float(state.y_scale[output]))
