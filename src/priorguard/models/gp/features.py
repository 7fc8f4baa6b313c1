"""Random features for pathwise GP draws, and the float64 cosine they are evaluated with.

Random features (Wilson et al., 2020). Every base kernel has a zero-mean random
feature ``r(x)`` with ``E[r(x) r(x')] = k(x, x')``, one row of :data:`FEATURES` per
kernel kind:

* stationary kernels: random Fourier features ``sqrt(2 s2) cos(w . x + b)``
  with ``w`` from the spectral density (Gaussian for rbf; multivariate t with
  ``2 nu`` degrees of freedom for Matern-nu; a Gamma(alpha, alpha) scale
  mixture of Gaussians for rational quadratic);
* periodic: exactly an rbf with lengthscale ``2 l_d`` on the circle embedding
  ``(sin(2 pi x_d / p), cos(2 pi x_d / p))``, so Fourier features of that rbf;
* linear: ``sqrt(s2) g . x`` with ``g ~ N(0, I)`` (as a whole sum term the exact
  basis ``sqrt(s2) x`` is used instead);
* polynomial: random Maclaurin features (Kar & Karnick, 2012): a product of
  ``degree`` independent features of ``shift + s2 x . x'``;
* white: none (white terms are noise, not part of the latent function).

Products multiply independent features of their factors, sums (inside a
product) add them; both keep the second moment exact (that recursion is in
:class:`priorguard.models.gp.kernels.Kernel`). Each draw gets its own feature
parameters, so the mean and covariance of the draws equal the GP posterior's
exactly in expectation over draws.

The cosine. XLA:CPU evaluates ``cos`` of float64 arrays element by element
through a scalar routine (about 7 ns per element on the 2-core machine
priorguard is measured on), and random Fourier features are
``cos(omega . x + phase)`` at every feature of every draw of every input:
inside a planner's search that is most of the arithmetic. :func:`cos` computes
the same function from adds, multiplies and selects, which XLA fuses and
vectorises (6x faster there: 491,520 values in 0.60 ms instead of 3.65 ms).

Method (fdlibm's): ``x = k * pi/2 + r`` with ``|r| <= pi/4``, ``pi/2`` split
in three parts (Cody-Waite: the first two hold 33 bits, so ``k * part`` is
exact for ``|k| < 2**20``), then degree-14/13 minimax polynomials for
``cos r`` and ``sin r`` and the quadrant's sign. Against libm the absolute
error stays within 2.5e-16 for ``|x|`` up to 1e12 (tests/models/test_fastmath.py);
the derivative is ``-sin`` computed the same way. NaN and infinities give NaN,
as ``jnp.cos``. Other dtypes use ``jnp.cos``.

Shapes: ``f`` features per block, ``d`` the kernel's active columns, ``N`` inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["FEATURES", "RandomFeatures", "cos"]

# --------------------------------------------------------------------------------------
# The vectorisable float64 cosine
# --------------------------------------------------------------------------------------

_TWO_OVER_PI = 6.36619772367581382433e-01
_PIO2_1 = 1.57079632673412561417e00  # first 33 bits of pi/2
_PIO2_2 = 6.07710050630396597660e-11  # next 33 bits
_PIO2_2T = 2.02226624879595063154e-21  # pi/2 - (_PIO2_1 + _PIO2_2)

# fdlibm __kernel_sin / __kernel_cos minimax coefficients on [-pi/4, pi/4]
_S = (-1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04,
      2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10)
_C = (4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05,
      -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11)


def _horner(coeffs: tuple[float, ...], z: Array) -> Array:
    out = jnp.full_like(z, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * z + c
    return out


def _reduce(x: Array) -> tuple[Array, Array, Array]:
    """``(cos r, sin r, q)`` with ``x = k pi/2 + r`` and ``q = k mod 4`` (as a float)."""
    k = jnp.round(x * _TWO_OVER_PI)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_2T
    z = r * r
    sin_r = r + r * z * _horner(_S, z)
    cos_r = 1.0 - 0.5 * z + z * z * _horner(_C, z)
    q = k - 4.0 * jnp.floor(0.25 * k)
    return cos_r, sin_r, q


def _quadrant(q: Array, a: Array, b: Array, c: Array, d: Array) -> Array:
    return jnp.where(q == 0.0, a, jnp.where(q == 1.0, b, jnp.where(q == 2.0, c, d)))


@jax.custom_jvp
def _cos64(x: Array) -> Array:
    cos_r, sin_r, q = _reduce(x)
    return _quadrant(q, cos_r, -sin_r, -cos_r, sin_r)


@_cos64.defjvp
def _cos64_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    cos_r, sin_r, q = _reduce(x)
    cos_x = _quadrant(q, cos_r, -sin_r, -cos_r, sin_r)
    sin_x = _quadrant(q, sin_r, cos_r, -sin_r, -cos_r)
    return cos_x, -sin_x * t


def cos(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """``cos(x)``: vectorisable for float64 (see the module docstring), ``jnp.cos`` otherwise.

    Example:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> x = jnp.linspace(-50.0, 50.0, 1001, dtype=jnp.float64)
        >>> bool(np.max(np.abs(np.asarray(cos(x)) - np.cos(np.asarray(x)))) < 1e-15)
        True
    """
    x = jnp.asarray(x)
    if x.dtype != jnp.float64:
        return jnp.cos(x)
    return _cos64(x)


# --------------------------------------------------------------------------------------
# Random features, one row per kernel kind
# --------------------------------------------------------------------------------------

_MATERN_NU = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}

Keys = tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray]


class RandomFeatures(NamedTuple):
    """How one kernel kind draws and evaluates its random features.

    Attributes:
        sample: ``(leaf, theta_leaf, (k_w, k_b, k_s), f) -> params`` of ``f`` i.i.d.
            features (``theta_leaf``: parameter name -> value of one output).
        evaluate: ``(leaf, theta_leaf, params, a [N, d], f) -> [N, f]`` unit features
            ``r(a)`` with ``E[r(a) r(a')] = k(a, a')`` (``a``: the leaf's columns).
    """

    sample: Callable[[Any, Mapping[str, Array], Keys, int], Any]
    evaluate: Callable[[Any, Mapping[str, Array], Any, Array, int], Array]


def _rbf_scale(th: Mapping[str, Array], key: PRNGKeyArray, f: int) -> Array:
    return jnp.ones((f, 1))


def _rational_quadratic_scale(th: Mapping[str, Array], key: PRNGKeyArray, f: int) -> Array:
    alpha = th["alpha"]
    return jnp.sqrt(jax.random.gamma(key, alpha, (f, 1)) / alpha)


def _matern_scale(nu: float) -> Callable[[Mapping[str, Array], PRNGKeyArray, int], Array]:
    def scale(th: Mapping[str, Array], key: PRNGKeyArray, f: int) -> Array:
        return jnp.sqrt(nu / jax.random.gamma(key, nu, (f, 1)))

    return scale


#: Stationary kind -> the random scale of its spectral frequencies (a Gaussian times it).
SPECTRAL_SCALE: dict[str, Callable[[Mapping[str, Array], PRNGKeyArray, int], Array]] = {
    "rbf": _rbf_scale,
    "rational_quadratic": _rational_quadratic_scale,
    **{kind: _matern_scale(nu) for kind, nu in _MATERN_NU.items()},
}


def _fourier_sample(leaf: Any, th: Mapping[str, Array], keys: Keys, f: int) -> dict[str, Array]:
    k_w, k_b, k_s = keys
    z = jax.random.normal(k_w, (f, len(leaf.dims)))
    scale = SPECTRAL_SCALE[leaf.kind](th, k_s, f)
    omega = z * scale / th["lengthscale"]
    return {"omega": omega, "phase": jax.random.uniform(k_b, (f,), maxval=2 * jnp.pi)}


def _fourier_eval(leaf: Any, th: Mapping[str, Array], params: Any, a: Array, f: int) -> Array:
    return jnp.sqrt(2.0 * th["variance"]) * cos(a @ params["omega"].T + params["phase"])


def _periodic_sample(leaf: Any, th: Mapping[str, Array], keys: Keys, f: int) -> dict[str, Array]:
    # rbf with lengthscale 2 l_d on (sin, cos)(2 pi x_d / p): two coordinates per dim.
    k_w, k_b, _ = keys
    d = len(leaf.dims)
    z = jax.random.normal(k_w, (f, d, 2))
    ls = jnp.broadcast_to(th["lengthscale"], (d,))
    omega = z / (2.0 * ls)[None, :, None]
    return {"omega": omega, "phase": jax.random.uniform(k_b, (f,), maxval=2 * jnp.pi)}


def _periodic_eval(leaf: Any, th: Mapping[str, Array], params: Any, a: Array, f: int) -> Array:
    ang = 2 * jnp.pi * a / th["period"]
    emb = jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1)  # [N, d, 2]
    proj = jnp.einsum("nde,fde->nf", emb, params["omega"])
    return jnp.sqrt(2.0 * th["variance"]) * cos(proj + params["phase"])


def _linear_sample(leaf: Any, th: Mapping[str, Array], keys: Keys, f: int) -> dict[str, Array]:
    return {"g": jax.random.normal(keys[0], (f, len(leaf.dims)))}


def _linear_eval(leaf: Any, th: Mapping[str, Array], params: Any, a: Array, f: int) -> Array:
    return jnp.sqrt(th["variance"]) * (a @ params["g"].T)


def _polynomial_sample(leaf: Any, th: Mapping[str, Array], keys: Keys, f: int) -> dict[str, Array]:
    k_w, k_b, _ = keys
    return {"g": jax.random.normal(k_w, (f, leaf.degree, len(leaf.dims))),
            "g0": jax.random.normal(k_b, (f, leaf.degree))}


def _polynomial_eval(leaf: Any, th: Mapping[str, Array], params: Any, a: Array, f: int) -> Array:
    lin = jnp.einsum("nd,fkd->nfk", a, params["g"])
    factors = jnp.sqrt(th["shift"]) * params["g0"][None] + jnp.sqrt(th["variance"]) * lin
    return jnp.prod(factors, axis=-1)


def _white_sample(leaf: Any, th: Mapping[str, Array], keys: Keys, f: int) -> dict[str, Array]:
    return {}


def _white_eval(leaf: Any, th: Mapping[str, Array], params: Any, a: Array, f: int) -> Array:
    return jnp.zeros((a.shape[0], f), dtype=a.dtype)


#: Kernel kind -> its random features.
FEATURES: dict[str, RandomFeatures] = {
    **{kind: RandomFeatures(_fourier_sample, _fourier_eval) for kind in SPECTRAL_SCALE},
    "periodic": RandomFeatures(_periodic_sample, _periodic_eval),
    "linear": RandomFeatures(_linear_sample, _linear_eval),
    "polynomial": RandomFeatures(_polynomial_sample, _polynomial_eval),
    "white": RandomFeatures(_white_sample, _white_eval),
}
