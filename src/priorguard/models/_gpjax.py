"""GP numerics backend: kernels, marginal likelihood, random features, GPJax interop.

This is the one module that touches GPJax's API (GPJax changes it at every
minor release; it is pinned to 1.0.0). The hot paths are written out here in
plain JAX rather than routed through GPJax objects, for three reasons that the
benchmarks measure (``benchmarks/bench_gp.py``):

* the exact log marginal likelihood has a hand-written reverse-mode rule
  (:func:`log_marginal_likelihood`): one Cholesky (``potrf``) plus one inverse
  from the factor (``potri``), gradient ``0.5 (alpha alpha^T - K^-1)`` w.r.t.
  ``K`` — autodiff through the Cholesky costs about twice as much;
* function draws need their random-feature parameters as arrays stacked over
  draws (GPJax's ``sample_approx`` returns a closure, shares one frequency set
  across all draws and covers only kernels with a spectral density);
* every kernel here must agree entry for entry with GPJax's definition of the
  same kernel: :func:`to_gpjax_kernel` builds the GPJax twin and the tests
  compare the two Gram matrices for every kernel kind.

Kernel definitions (``r^2 = sum_d ((x_d - x'_d) / l_d)^2`` over the kernel's
active dimensions; GPJax 1.0 conventions):

* ``rbf``: ``s2 exp(-r^2 / 2)``; ``matern12``: ``s2 exp(-r)``;
  ``matern32``: ``s2 (1 + sqrt3 r) exp(-sqrt3 r)``;
  ``matern52``: ``s2 (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)``;
* ``rational_quadratic``: ``s2 (1 + r^2 / (2 alpha))^-alpha``;
* ``periodic``: ``s2 exp(-0.5 sum_d (sin(pi (x_d - x'_d) / p) / l_d)^2)``;
* ``linear``: ``s2 x . x'``; ``polynomial``: ``(shift + s2 x . x')^degree``;
* ``white``: ``s2`` where the two inputs are the same training point, else 0.
  White terms are noise, not signal: they enter the training Gram matrix and
  the aleatoric variance, never the latent function or its draws.

Random features for pathwise draws (Wilson et al., 2020). Every base kernel has
a zero-mean random feature ``r(x)`` with ``E[r(x) r(x')] = k(x, x')``:

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
* products multiply independent features of their factors, sums (inside a
  product) add them; both keep the second moment exact.

Each draw gets its own feature parameters, so the mean and covariance of the
draws equal the GP posterior's exactly in expectation over draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard.models import _fastmath
from priorguard.priors.distributions import Prior
from priorguard.priors.kernels import (
    KERNEL_PARAMS,
    STATIONARY,
    CompositeKernel,
    _KernelBase,
    default_prior,
)

#: Jitter levels tried in turn, relative to the mean of the matrix diagonal.
JITTER_LEVELS: tuple[float, ...] = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)

#: Smallest matrix whose inverse goes to LAPACK ``potri`` through a host callback (CPU).
POTRI_MIN_N = 1024

_MATERN_NU = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}


class GPNumericalError(FloatingPointError):
    """A covariance matrix stayed indefinite after the largest jitter."""


# --------------------------------------------------------------------------------------
# Kernel programs: a resolved, hashable form of a kernel spec
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter site.

    Attributes:
        name: parameter name (``lengthscale``, ``variance``, ``noise``, ...).
        site: full numpyro site name, e.g. ``terminal/kernel/terms/0/lengthscale``.
        shape: event shape (``(d,)`` for an ARD lengthscale over d dims, else ``()``).
        fixed: the value when fixed, else None.
        prior_json: canonical JSON of the prior (part of equality and hash).
        prior: the prior itself (None when fixed).
        dim_names: feature names along the lengthscale axis (ARD only).
    """

    name: str
    site: str
    shape: tuple[int, ...]
    fixed: float | None
    prior_json: str | None
    prior: Prior | None = field(default=None, compare=False, repr=False)
    dim_names: tuple[str, ...] = ()

    @property
    def free(self) -> bool:
        return self.fixed is None


@dataclass(frozen=True)
class KernelLeaf:
    """A base kernel with its active columns resolved to indices."""

    kind: str
    dims: tuple[int, ...]
    all_dims: bool
    degree: int
    hypers: tuple[Hyper, ...]
    path: str

    def hyper(self, name: str) -> Hyper:
        return next(h for h in self.hypers if h.name == name)


@dataclass(frozen=True)
class KernelNode:
    """A sum or product of kernels."""

    op: Literal["sum", "product"]
    terms: tuple[KernelLeaf | KernelNode, ...]
    path: str


KernelTree = KernelLeaf | KernelNode


@dataclass(frozen=True)
class GPProgram:
    """Everything about a GP model that decides compiled code (hashable).

    Attributes:
        kernel: the resolved kernel tree.
        noise: observation-noise standard deviation site.
        mean_constant: constant-mean site, or None for a zero mean.
        site_prefix: prefix of all site names (``terminal``, ``world`` ...).
        feature_names: names of the model's input features (columns it sees).
        noise_floor: a std added in quadrature to a learned noise (0 for a fixed
            one): the observation noise is ``sqrt(noise^2 + noise_floor^2)``.
    """

    kernel: KernelTree
    noise: Hyper
    mean_constant: Hyper | None
    site_prefix: str
    feature_names: tuple[str, ...]
    noise_floor: float = 0.0

    @property
    def input_dim(self) -> int:
        return len(self.feature_names)

    def anonymous(self) -> GPProgram:
        """The same program with its features unnamed (``x0, x1, ...``).

        Names matter for reports and error messages, not for computation: GP
        draws key their compiled code on this, so models over different
        features of the same shape (a sweep over features) share it.
        """
        def leaf(tree: KernelTree) -> KernelTree:
            if isinstance(tree, KernelLeaf):
                return replace(tree, hypers=tuple(replace(h, dim_names=()) for h in tree.hypers))
            return replace(tree, terms=tuple(leaf(t) for t in tree.terms))

        return replace(self, kernel=leaf(self.kernel),
                       feature_names=tuple(f"x{i}" for i in range(len(self.feature_names))))

    @property
    def hypers(self) -> tuple[Hyper, ...]:
        out = list(kernel_hypers(self.kernel)) + [self.noise]
        if self.mean_constant is not None:
            out.append(self.mean_constant)
        return tuple(out)

    @property
    def free_hypers(self) -> tuple[Hyper, ...]:
        return tuple(h for h in self.hypers if h.free)

    def describe(self) -> str:
        return describe_tree(self.kernel)


def kernel_hypers(tree: KernelTree) -> tuple[Hyper, ...]:
    if isinstance(tree, KernelLeaf):
        return tree.hypers
    return tuple(h for t in tree.terms for h in kernel_hypers(t))


def kernel_leaves(tree: KernelTree) -> tuple[KernelLeaf, ...]:
    if isinstance(tree, KernelLeaf):
        return (tree,)
    return tuple(leaf for t in tree.terms for leaf in kernel_leaves(t))


def describe_tree(tree: KernelTree) -> str:
    if isinstance(tree, KernelLeaf):
        return tree.kind
    parts = [describe_tree(t) for t in tree.terms]
    if tree.op == "product":
        parts = [f"({p})" if " + " in p else p for p in parts]
        return " * ".join(parts)
    return " + ".join(parts)


def _make_hyper(name: str, site: str, value: Any, shape: tuple[int, ...], dim: int,
                dim_names: tuple[str, ...] = ()) -> Hyper:
    if value is None:
        value = default_prior(name, dim)
    if isinstance(value, Prior):
        return Hyper(name, site, shape, None, value.model_dump_json(), value, dim_names)
    return Hyper(name, site, shape, float(value), None, None, dim_names)


def resolve_dims(active_dims: Sequence[str | int] | None, feature_names: Sequence[str]) -> tuple[int, ...]:
    """Resolves a kernel's ``active_dims`` (names or indices) to column indices."""
    if active_dims is None:
        return tuple(range(len(feature_names)))
    out = []
    for d in active_dims:
        if isinstance(d, str):
            if d not in feature_names:
                raise ValueError(
                    f"kernel active_dims names feature {d!r}, which the model does not see;"
                    f" its features are {list(feature_names)}"
                )
            out.append(list(feature_names).index(d))
        else:
            if not 0 <= int(d) < len(feature_names):
                raise ValueError(
                    f"kernel active_dims index {d} is out of range for {len(feature_names)} features"
                )
            out.append(int(d))
    return tuple(out)


def compile_kernel(kernel: Any, *, feature_names: Sequence[str], site_prefix: str,
                   path: str = "kernel") -> KernelTree:
    """Resolves a kernel spec into a :class:`KernelTree` with site names.

    Args:
        kernel: a fixed kernel spec (base or composite; not a structure search).
        feature_names: names of the columns the model sees (``D`` of them).
        site_prefix: prefix of the site names.
        path: site path of this kernel below the prefix.

    Returns:
        The resolved tree; hyperparameters left unset get their default priors.
    """
    if isinstance(kernel, CompositeKernel):
        terms = tuple(
            compile_kernel(t, feature_names=feature_names, site_prefix=site_prefix, path=f"{path}/terms/{i}")
            for i, t in enumerate(kernel.terms)
        )
        return KernelNode(kernel.kind, terms, path)
    if not isinstance(kernel, _KernelBase):
        raise TypeError(f"not a fixed kernel spec: {type(kernel).__name__}")
    dims = resolve_dims(kernel.active_dims, feature_names)
    d = len(dims)
    names = tuple(feature_names[i] for i in dims)
    hypers = []
    for param in KERNEL_PARAMS[kernel.kind]:
        ard = getattr(kernel, "ard", False)
        shape = (d,) if (param == "lengthscale" and ard) else ()
        hypers.append(_make_hyper(param, f"{site_prefix}/{path}/{param}", getattr(kernel, param, None), shape, d,
                                  names if shape else ()))
    degree = int(getattr(kernel, "degree", 1))
    return KernelLeaf(kernel.kind, dims, dims == tuple(range(len(feature_names))), degree, tuple(hypers), path)


def compile_program(kernel: Any, *, noise: Any, mean: str, feature_names: Sequence[str],
                    site_prefix: str, noise_floor: float = 0.0) -> GPProgram:
    """Builds the :class:`GPProgram` of a GP spec (kernel, noise, mean).

    ``noise_floor`` applies to a learned noise only: a fixed noise is used as given.
    """
    tree = compile_kernel(kernel, feature_names=feature_names, site_prefix=site_prefix)
    dim = len(feature_names)
    noise_h = _make_hyper("noise", f"{site_prefix}/noise", noise, (), dim)
    if noise_h.fixed is not None and not noise_h.fixed > 0:
        raise ValueError(f"noise must be > 0, got {noise_h.fixed}")
    mean_h = None
    if mean == "constant":
        mean_h = _make_hyper("constant", f"{site_prefix}/mean/constant",
                             Prior(dist="Normal", params={"loc": 0.0, "scale": 1.0}), (), dim)
    elif mean != "zero":
        raise ValueError(f"mean must be 'zero' or 'constant', got {mean!r}")
    if not (math.isfinite(noise_floor) and noise_floor >= 0):
        raise ValueError(f"noise_floor must be a finite number >= 0, got {noise_floor}")
    floor = float(noise_floor) if noise_h.fixed is None else 0.0
    return GPProgram(tree, noise_h, mean_h, site_prefix, tuple(feature_names), floor)


# --------------------------------------------------------------------------------------
# Kernel evaluation (plain JAX; theta maps site -> constrained value for ONE output)
# --------------------------------------------------------------------------------------


def _cols(x: Array, leaf: KernelLeaf) -> Array:
    return x if leaf.all_dims else x[:, jnp.asarray(leaf.dims)]


def _sq_dist(a: Array, b: Array, *, same: bool) -> Array:
    """Squared distances ``[N1, N2]`` between rows of already scaled inputs.

    Expanded as ``|a|^2 + |b|^2 - 2 a.b`` so the work (and its gradient) is a
    matrix product rather than an ``[N1, N2, D]`` tensor; clamped at 0, and
    exactly 0 on the diagonal of a Gram matrix (``same``).
    """
    sa = jnp.sum(a * a, axis=-1)
    sb = sa if same else jnp.sum(b * b, axis=-1)
    r2 = jnp.maximum(sa[:, None] + sb[None, :] - 2.0 * (a @ b.T), 0.0)
    if same:
        n = a.shape[0]
        diag = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0) == jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
        r2 = jnp.where(diag, 0.0, r2)
    return r2


def _circle(a: Array, period: Array, ls: Array) -> Array:
    """``[N, 2d]`` embedding with ``|e(x) - e(x')|^2 = sum_d (sin(pi (x_d - x'_d) / p) / l_d)^2``."""
    ang = 2 * jnp.pi * a / period
    ls = jnp.broadcast_to(ls, (a.shape[-1],))
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1) / jnp.concatenate([2 * ls, 2 * ls])


def _stationary_profile(kind: str, r2: Array, theta_leaf: Mapping[str, Array]) -> Array:
    if kind == "rbf":
        return jnp.exp(-0.5 * r2)
    if kind == "rational_quadratic":
        alpha = theta_leaf["alpha"]
        return (1.0 + 0.5 * r2 / alpha) ** (-alpha)
    r = jnp.sqrt(jnp.maximum(r2, 1e-36))  # safe at r = 0 (the gradient there is 0)
    if kind == "matern12":
        return jnp.exp(-r)
    if kind == "matern32":
        s = math.sqrt(3.0) * r
        return (1.0 + s) * jnp.exp(-s)
    if kind == "matern52":
        s = math.sqrt(5.0) * r
        return (1.0 + s + s * s / 3.0) * jnp.exp(-s)
    raise ValueError(kind)


def _leaf_theta(leaf: KernelLeaf, theta: Mapping[str, Array]) -> dict[str, Array]:
    return {h.name: theta[h.site] for h in leaf.hypers}


def gram(tree: KernelTree, theta: Mapping[str, Array], x1: Array, x2: Array, *, same: bool) -> Array:
    """Kernel matrix ``[N1, N2]``; ``same=True`` means ``x1`` and ``x2`` are the same points.

    White-noise terms contribute only when ``same`` is True.
    """
    if isinstance(tree, KernelNode):
        parts = [gram(t, theta, x1, x2, same=same) for t in tree.terms]
        out = parts[0]
        for p in parts[1:]:
            out = out + p if tree.op == "sum" else out * p
        return out
    th = _leaf_theta(tree, theta)
    a, b = _cols(x1, tree), _cols(x2, tree)
    kind = tree.kind
    if kind in STATIONARY or kind == "rational_quadratic":
        ls = th["lengthscale"]
        return th["variance"] * _stationary_profile(kind, _sq_dist(a / ls, b / ls, same=same), th)
    if kind == "periodic":
        ea = _circle(a, th["period"], th["lengthscale"])
        eb = ea if same else _circle(b, th["period"], th["lengthscale"])
        return th["variance"] * jnp.exp(-0.5 * _sq_dist(ea, eb, same=same))
    if kind == "linear":
        return th["variance"] * (a @ b.T)
    if kind == "polynomial":
        return (th["shift"] + th["variance"] * (a @ b.T)) ** tree.degree
    if kind == "white":
        if same:
            return th["variance"] * jnp.eye(x1.shape[0], dtype=x1.dtype)
        return jnp.zeros((x1.shape[0], x2.shape[0]), dtype=x1.dtype)
    raise ValueError(kind)


def gram_diag(tree: KernelTree, theta: Mapping[str, Array], x: Array, *, white: bool) -> Array:
    """Diagonal ``k(x_i, x_i)`` ``[N]``; white terms count only when ``white`` is True."""
    if isinstance(tree, KernelNode):
        parts = [gram_diag(t, theta, x, white=white) for t in tree.terms]
        out = parts[0]
        for p in parts[1:]:
            out = out + p if tree.op == "sum" else out * p
        return out
    th = _leaf_theta(tree, theta)
    a = _cols(x, tree)
    n = x.shape[0]
    kind = tree.kind
    if kind in STATIONARY or kind in ("rational_quadratic", "periodic"):
        return jnp.broadcast_to(th["variance"], (n,)).astype(x.dtype)
    if kind == "linear":
        return th["variance"] * jnp.sum(a * a, axis=-1)
    if kind == "polynomial":
        return (th["shift"] + th["variance"] * jnp.sum(a * a, axis=-1)) ** tree.degree
    if kind == "white":
        return jnp.broadcast_to(th["variance"] if white else 0.0, (n,)).astype(x.dtype)
    raise ValueError(kind)


def has_white(tree: KernelTree) -> bool:
    return any(leaf.kind == "white" for leaf in kernel_leaves(tree))


def training_covariance(program: GPProgram, theta: Mapping[str, Array], x: Array) -> Array:
    """``K(X, X) + noise^2 I`` for one output."""
    k = gram(program.kernel, theta, x, x, same=True)
    noise = theta[program.noise.site]
    return k + (noise * noise) * jnp.eye(x.shape[0], dtype=x.dtype)


def mean_value(program: GPProgram, theta: Mapping[str, Array]) -> Array:
    if program.mean_constant is None:
        return jnp.zeros(())
    return theta[program.mean_constant.site]


def map_unbatched(fn: Any, *args: Any) -> Any:
    """``fn`` over the leading axis of ``args`` without batching its linear algebra.

    ``lax.map`` (or a plain call when the axis has length 1) instead of
    ``vmap``: jaxlib 0.10.2's CPU LAPACK kernels split a *batched*
    ``trsm``/``potrf`` over the XLA thread pool (``ParallelBatchMap``) and
    were seen to deadlock on a 2-core pool when two such calls ran at once.
    Outputs and hyperparameter samples are few, so the sequential loop costs
    nothing measurable.
    """
    n = jax.tree_util.tree_leaves(args)[0].shape[0]
    if n == 1:
        out = fn(*jax.tree_util.tree_map(lambda a: a[0], args))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return jax.lax.map(lambda a: fn(*a), args)


# --------------------------------------------------------------------------------------
# Cholesky with escalating jitter, and the marginal likelihood with an analytic VJP
# --------------------------------------------------------------------------------------


def _cholesky(k: Array) -> Array:
    return jax.lax.linalg.cholesky(k, symmetrize_input=False)


def cholesky_with_jitter(k: Float[Array, "N N"]) -> tuple[Float[Array, "N N"], Float[Array, ""]]:
    """Lower Cholesky factor of ``k + jitter I`` with the smallest working jitter.

    The jitter-free factor is tried first; only if it fails does a
    ``lax.while_loop`` try :data:`JITTER_LEVELS` (relative to the mean
    diagonal) in turn, and the matrix is then factorised once more with the
    first level that worked.

    Returns:
        ``(L, jitter)``: the factor (NaN if every level failed) and the absolute
        jitter added to the diagonal.
    """
    n = k.shape[-1]
    scale = jnp.mean(jnp.diagonal(k))
    levels = jnp.asarray(JITTER_LEVELS, dtype=k.dtype)
    eye = jnp.eye(n, dtype=k.dtype)

    def ok(chol: Array) -> Array:
        return jnp.all(jnp.isfinite(jnp.diagonal(chol)))

    def retry(_: None) -> tuple[Array, Array]:
        def cond(carry: tuple[Array, Array]) -> Array:
            i, good = carry
            return ~good & (i < len(JITTER_LEVELS) - 1)

        def body(carry: tuple[Array, Array]) -> tuple[Array, Array]:
            i = carry[0] + 1
            return i, ok(_cholesky(k + levels[i] * scale * eye))

        i, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), jnp.asarray(False)))
        return _cholesky(k + levels[i] * scale * eye), levels[i] * scale

    chol0 = _cholesky(k)
    return jax.lax.cond(ok(chol0), lambda _: (chol0, jnp.zeros((), k.dtype)), retry, None)


def _potri_host(chol: np.ndarray) -> np.ndarray:
    """``K^{-1}`` (lower triangle valid) from lower factors ``[..., N, N]`` via LAPACK potri."""
    from scipy.linalg import lapack

    chol = np.asarray(chol)
    potri = lapack.get_lapack_funcs("potri", (chol,))

    def one(factor: np.ndarray) -> np.ndarray:
        # A C-ordered lower factor is an F-ordered upper factor of the same matrix, and
        # the F-ordered upper result read in C order is the lower triangle: no copies.
        inv, info = potri(factor.T, lower=0)
        return inv.T if info == 0 else np.full(factor.shape, np.nan, dtype=factor.dtype)

    if chol.ndim == 2:
        return one(chol)
    out = np.empty(chol.shape, dtype=chol.dtype)
    for idx in np.ndindex(*chol.shape[:-2]):
        out[idx] = one(chol[idx])
    return out


def _inverse_from_cholesky_xla(chol: Array) -> Array:
    eye = jnp.eye(chol.shape[-1], dtype=chol.dtype)
    return jax.scipy.linalg.cho_solve((chol, True), eye)


def inverse_from_cholesky(chol: Float[Array, "N N"]) -> Float[Array, "N N"]:
    """``(L L^T)^{-1}``; only the lower triangle is guaranteed.

    On CPU with ``N >= POTRI_MIN_N`` this is a host callback to LAPACK
    ``potri`` (``2/3 N^3`` flops; XLA has no equivalent and its triangular
    solves against the identity cost three times as many). Below that size,
    and on other platforms, it stays in XLA (``cho_solve`` against the
    identity): the callback's fixed latency is not worth it for small
    matrices, and on a crowded CPU that latency grows to milliseconds.
    """
    if chol.shape[-1] < POTRI_MIN_N:
        return _inverse_from_cholesky_xla(chol)

    def cpu(c: Array) -> Array:
        return jax.pure_callback(_potri_host, jax.ShapeDtypeStruct(c.shape, c.dtype), c,
                                 vmap_method="broadcast_all")

    return jax.lax.platform_dependent(chol, cpu=cpu, default=_inverse_from_cholesky_xla)


def _mll_value(chol: Array, resid: Array) -> tuple[Array, Array]:
    alpha = jax.scipy.linalg.cho_solve((chol, True), resid)
    n = resid.shape[-1]
    value = -0.5 * jnp.dot(resid, alpha) - jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * n * math.log(2 * math.pi)
    return value, alpha


@jax.custom_vjp
def log_marginal_likelihood(k: Float[Array, "N N"], resid: Float[Array, " N"]) -> Float[Array, ""]:
    """``log N(resid | 0, k)`` with a hand-written gradient.

    The forward pass is one Cholesky (with escalating jitter); the backward pass
    adds one inverse from the factor and returns
    ``dL/dK = 0.5 (alpha alpha^T - K^-1)`` and ``dL/dr = -alpha`` — with the
    ``K`` cotangent in lower-triangular form (off-diagonal entries doubled,
    upper triangle zero), which gives the same gradient for any ``K`` built
    symmetrically from parameters. Forward-mode differentiation is not
    supported; use :func:`log_marginal_likelihood_autodiff` for Hessians.

    Args:
        k: ``[N, N]`` covariance of the observations (kernel plus noise).
        resid: ``[N]`` observations minus the prior mean.

    Returns:
        The log density (NaN only if every jitter level failed).
    """
    chol, _ = cholesky_with_jitter(k)
    return _mll_value(chol, resid)[0]


def _mll_fwd(k: Array, resid: Array) -> tuple[Array, tuple[Array, Array]]:
    chol, _ = cholesky_with_jitter(k)
    value, alpha = _mll_value(chol, resid)
    return value, (chol, alpha)


def _mll_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    chol, alpha = res
    kinv = inverse_from_cholesky(chol)  # lower triangle valid
    n = alpha.shape[-1]
    row = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    grad = (0.5 * g) * (alpha[:, None] * alpha[None, :] - kinv)
    grad = jnp.where(row > col, 2.0 * grad, jnp.where(row == col, grad, 0.0))
    return grad, -g * alpha


log_marginal_likelihood.defvjp(_mll_fwd, _mll_bwd)


def log_marginal_likelihood_autodiff(k: Float[Array, "N N"], resid: Float[Array, " N"]) -> Float[Array, ""]:
    """The same value as :func:`log_marginal_likelihood`, differentiated by JAX.

    The jitter level is chosen without gradient, then the factorisation is
    redone differentiably. Supports any order of forward and reverse mode.
    """
    _, jitter = cholesky_with_jitter(jax.lax.stop_gradient(k))
    chol = _cholesky(k + jax.lax.stop_gradient(jitter) * jnp.eye(k.shape[-1], dtype=k.dtype))
    return _mll_value(chol, resid)[0]


# --------------------------------------------------------------------------------------
# Random features for pathwise function draws
# --------------------------------------------------------------------------------------


def _iid_sample(tree: KernelTree, theta: Mapping[str, Array], key: PRNGKeyArray, f: int) -> Any:
    """Parameters of ``f`` i.i.d. zero-mean random features of ``tree``."""
    if isinstance(tree, KernelNode):
        keys = jax.random.split(key, len(tree.terms))
        return [_iid_sample(t, theta, k, f) for t, k in zip(tree.terms, keys)]
    th = _leaf_theta(tree, theta)
    d = len(tree.dims)
    kind = tree.kind
    k_w, k_b, k_s = jax.random.split(key, 3)
    if kind in STATIONARY or kind == "rational_quadratic":
        z = jax.random.normal(k_w, (f, d))
        if kind == "rbf":
            scale = jnp.ones((f, 1))
        elif kind == "rational_quadratic":
            alpha = th["alpha"]
            scale = jnp.sqrt(jax.random.gamma(k_s, alpha, (f, 1)) / alpha)
        else:
            nu = _MATERN_NU[kind]
            scale = jnp.sqrt(nu / jax.random.gamma(k_s, nu, (f, 1)))
        omega = z * scale / th["lengthscale"]
        return {"omega": omega, "phase": jax.random.uniform(k_b, (f,), maxval=2 * jnp.pi)}
    if kind == "periodic":
        # rbf with lengthscale 2 l_d on (sin, cos)(2 pi x_d / p): two coordinates per dim.
        z = jax.random.normal(k_w, (f, d, 2))
        ls = jnp.broadcast_to(th["lengthscale"], (d,))
        omega = z / (2.0 * ls)[None, :, None]
        return {"omega": omega, "phase": jax.random.uniform(k_b, (f,), maxval=2 * jnp.pi)}
    if kind == "linear":
        return {"g": jax.random.normal(k_w, (f, d))}
    if kind == "polynomial":
        return {"g": jax.random.normal(k_w, (f, tree.degree, d)),
                "g0": jax.random.normal(k_b, (f, tree.degree))}
    if kind == "white":
        return {}
    raise ValueError(kind)


def _iid_eval(tree: KernelTree, theta: Mapping[str, Array], params: Any, x: Array, f: int) -> Array:
    """``[N, f]`` unit random features ``r_l(x)`` with ``E[r_l(x) r_l(x')] = k(x, x')``."""
    if isinstance(tree, KernelNode):
        parts = [_iid_eval(t, theta, p, x, f) for t, p in zip(tree.terms, params)]
        out = parts[0]
        for p in parts[1:]:
            out = out + p if tree.op == "sum" else out * p
        return out
    th = _leaf_theta(tree, theta)
    a = _cols(x, tree)
    kind = tree.kind
    if kind in STATIONARY or kind == "rational_quadratic":
        return jnp.sqrt(2.0 * th["variance"]) * _fastmath.cos(a @ params["omega"].T + params["phase"])
    if kind == "periodic":
        ang = 2 * jnp.pi * a / th["period"]
        emb = jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1)  # [N, d, 2]
        proj = jnp.einsum("nde,fde->nf", emb, params["omega"])
        return jnp.sqrt(2.0 * th["variance"]) * _fastmath.cos(proj + params["phase"])
    if kind == "linear":
        return jnp.sqrt(th["variance"]) * (a @ params["g"].T)
    if kind == "polynomial":
        lin = jnp.einsum("nd,fkd->nfk", a, params["g"])
        factors = jnp.sqrt(th["shift"]) * params["g0"][None] + jnp.sqrt(th["variance"]) * lin
        return jnp.prod(factors, axis=-1)
    if kind == "white":
        return jnp.zeros((x.shape[0], f), dtype=x.dtype)
    raise ValueError(kind)


def _blocks(tree: KernelTree) -> tuple[KernelTree, ...]:
    return tree.terms if isinstance(tree, KernelNode) and tree.op == "sum" else (tree,)


def _exact_linear(block: KernelTree) -> bool:
    return isinstance(block, KernelLeaf) and block.kind == "linear"


def num_features(tree: KernelTree, per_block: int) -> int:
    """Total feature count: ``per_block`` per sum term, exact linear terms their width."""
    return sum(len(b.dims) if _exact_linear(b) else per_block for b in _blocks(tree))


def sample_features(tree: KernelTree, theta: Mapping[str, Array], key: PRNGKeyArray, per_block: int) -> Any:
    """Random-feature parameters of one prior draw (one per top-level sum term)."""
    blocks = _blocks(tree)
    keys = jax.random.split(key, len(blocks))
    return [{} if _exact_linear(b) else _iid_sample(b, theta, k, per_block) for b, k in zip(blocks, keys)]


def eval_features(tree: KernelTree, theta: Mapping[str, Array], params: Any, x: Array,
                  per_block: int) -> Float[Array, "N F"]:
    """Features ``phi(x)`` ``[N, F]`` with ``E[phi(x) . phi(x')] = k(x, x')`` (exact for linear)."""
    out = []
    for block, p in zip(_blocks(tree), params):
        if _exact_linear(block):
            out.append(jnp.sqrt(theta[block.hyper("variance").site]) * _cols(x, block))
        else:
            out.append(_iid_eval(block, theta, p, x, per_block) / math.sqrt(per_block))
    return jnp.concatenate(out, axis=-1)


# --------------------------------------------------------------------------------------
# GPJax interop (cross-checks and benchmarks)
# --------------------------------------------------------------------------------------


def to_gpjax_kernel(tree: KernelTree, theta: Mapping[str, Any]) -> Any:
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


def gpjax_gram(tree: KernelTree, theta: Mapping[str, Any], x1: Array, x2: Array) -> Array:
    """GPJax's cross-covariance of the twin kernel (a dense ``[N1, N2]`` array)."""
    return jnp.asarray(to_gpjax_kernel(tree, theta).cross_covariance(x1, x2))


def gpjax_conjugate_mll(tree: KernelTree, theta: Mapping[str, Any], noise: float, x: Array, y: Array) -> Array:
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


__all__ = [
    "JITTER_LEVELS",
    "GPNumericalError",
    "GPProgram",
    "Hyper",
    "KernelLeaf",
    "KernelNode",
    "cholesky_with_jitter",
    "compile_kernel",
    "compile_program",
    "eval_features",
    "gram",
    "gram_diag",
    "inverse_from_cholesky",
    "log_marginal_likelihood",
    "log_marginal_likelihood_autodiff",
    "map_unbatched",
    "sample_features",
    "to_gpjax_kernel",
]
