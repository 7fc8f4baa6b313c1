"""One row per kernel kind: its Gram matrix and diagonal (:data:`KIND_OPS`).

Definitions (``r^2 = sum_d ((x_d - x'_d) / l_d)^2`` over the kernel's active
dimensions) are listed in :mod:`priorguard.models.gp.kernels`, which evaluates
these rows for each base kernel (:class:`~priorguard.models.gp.kernels.KernelLeaf`);
a new kind adds a row here (or through :mod:`priorguard.models.gp.registry`). Each row
gets the leaf itself (for static fields such as ``degree``) and its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from priorguard.models.gp.linalg import circle_embedding, squared_distances

__all__ = ["KIND_OPS", "PROFILES", "KindOps"]


# --------------------------------------------------------------------------------------
# One row per kernel kind: Gram matrix and its diagonal
# --------------------------------------------------------------------------------------


def _distance(r2: Array) -> Array:
    return jnp.sqrt(jnp.maximum(r2, 1e-36))  # safe at r = 0 (the gradient there is 0)


def _matern12(r2: Array, th: Mapping[str, Array]) -> Array:
    return jnp.exp(-_distance(r2))


def _matern32(r2: Array, th: Mapping[str, Array]) -> Array:
    s = math.sqrt(3.0) * _distance(r2)
    return (1.0 + s) * jnp.exp(-s)


def _matern52(r2: Array, th: Mapping[str, Array]) -> Array:
    s = math.sqrt(5.0) * _distance(r2)
    return (1.0 + s + s * s / 3.0) * jnp.exp(-s)


def _rational_quadratic(r2: Array, th: Mapping[str, Array]) -> Array:
    alpha = th["alpha"]
    return (1.0 + 0.5 * r2 / alpha) ** (-alpha)


#: Stationary kind -> its profile ``k(r^2) / s2`` (``r^2`` over scaled inputs).
PROFILES: dict[str, Callable[[Array, Mapping[str, Array]], Array]] = {
    "rbf": lambda r2, th: jnp.exp(-0.5 * r2),
    "rational_quadratic": _rational_quadratic,
    "matern12": _matern12,
    "matern32": _matern32,
    "matern52": _matern52,
}


def _stationary_gram(leaf: Any, th: Mapping[str, Array], a: Array, b: Array, same: bool) -> Array:
    ls = th["lengthscale"]
    return th["variance"] * PROFILES[leaf.kind](squared_distances(a / ls, b / ls, same=same), th)


def _periodic_gram(leaf: Any, th: Mapping[str, Array], a: Array, b: Array, same: bool) -> Array:
    ea = circle_embedding(a, th["period"], th["lengthscale"])
    eb = ea if same else circle_embedding(b, th["period"], th["lengthscale"])
    return th["variance"] * jnp.exp(-0.5 * squared_distances(ea, eb, same=same))


def _linear_gram(leaf: Any, th: Mapping[str, Array], a: Array, b: Array, same: bool) -> Array:
    return th["variance"] * (a @ b.T)


def _polynomial_gram(leaf: Any, th: Mapping[str, Array], a: Array, b: Array, same: bool) -> Array:
    return (th["shift"] + th["variance"] * (a @ b.T)) ** leaf.degree


def _white_gram(leaf: Any, th: Mapping[str, Array], a: Array, b: Array, same: bool) -> Array:
    if same:
        return th["variance"] * jnp.eye(a.shape[0], dtype=a.dtype)
    return jnp.zeros((a.shape[0], b.shape[0]), dtype=a.dtype)


def _constant_diag(leaf: Any, th: Mapping[str, Array], a: Array, white: bool) -> Array:
    return jnp.broadcast_to(th["variance"], (a.shape[0],)).astype(a.dtype)


def _linear_diag(leaf: Any, th: Mapping[str, Array], a: Array, white: bool) -> Array:
    return th["variance"] * jnp.sum(a * a, axis=-1)


def _polynomial_diag(leaf: Any, th: Mapping[str, Array], a: Array, white: bool) -> Array:
    return (th["shift"] + th["variance"] * jnp.sum(a * a, axis=-1)) ** leaf.degree


def _white_diag(leaf: Any, th: Mapping[str, Array], a: Array, white: bool) -> Array:
    return jnp.broadcast_to(th["variance"] if white else 0.0, (a.shape[0],)).astype(a.dtype)


class KindOps(NamedTuple):
    """A kind's ``gram(leaf, th, a [N1, d], b [N2, d], same) -> [N1, N2]`` and
    ``diag(leaf, th, a [N, d], white) -> [N]`` (``a``, ``b``: its active columns; ``th``: its parameters)."""

    gram: Callable[[Any, Mapping[str, Array], Array, Array, bool], Array]
    diag: Callable[[Any, Mapping[str, Array], Array, bool], Array]


#: Kernel kind -> its Gram matrix and diagonal.
KIND_OPS: dict[str, KindOps] = {
    **{kind: KindOps(_stationary_gram, _constant_diag) for kind in PROFILES},
    "periodic": KindOps(_periodic_gram, _constant_diag),
    "linear": KindOps(_linear_gram, _linear_diag),
    "polynomial": KindOps(_polynomial_gram, _polynomial_diag),
    "white": KindOps(_white_gram, _white_diag),
}
