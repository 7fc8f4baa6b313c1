"""The compiled kernel: a kernel spec resolved into an equinox module with site names.

:func:`compile_program` turns a kernel spec (``priorguard.priors.kernels``) plus
noise and mean into a :class:`GPProgram`: a hashable equinox module with only
static fields (no arrays), whose methods evaluate the kernel at hyperparameters
``theta`` (site name -> constrained value of ONE output). Everything that
decides compiled code is in it, so compiled programs are cached by it.

Kernel definitions (``r^2 = sum_d ((x_d - x'_d) / l_d)^2`` over the kernel's
active dimensions; GPJax 1.0 conventions, checked entry for entry against GPJax
by the tests through :mod:`priorguard.models.gp._gpjax`), one row of
:data:`KIND_OPS` per kind (in :mod:`priorguard.models.gp.kinds`):

* ``rbf``: ``s2 exp(-r^2 / 2)``; ``matern12``: ``s2 exp(-r)``;
  ``matern32``: ``s2 (1 + sqrt3 r) exp(-sqrt3 r)``;
  ``matern52``: ``s2 (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)``;
* ``rational_quadratic``: ``s2 (1 + r^2 / (2 alpha))^-alpha``;
* ``periodic``: ``s2 exp(-0.5 sum_d (sin(pi (x_d - x'_d) / p) / l_d)^2)``;
* ``linear``: ``s2 x . x'``; ``polynomial``: ``(shift + s2 x . x')^degree``;
* ``white``: ``s2`` where the two inputs are the same training point, else 0.
  White terms are noise, not signal: they enter the training Gram matrix and
  the aleatoric variance, never the latent function or its draws.

A new kernel kind needs its spec in ``priorguard.priors.kernels``, a row here
and one in :data:`priorguard.models.gp.features.FEATURES`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard.models.gp.features import FEATURES
from priorguard.models.gp.kinds import KIND_OPS, PROFILES, KindOps
from priorguard.priors.distributions import Prior
from priorguard.priors.kernels import KERNELS, CompositeKernel, _KernelBase, default_prior
from priorguard.priors import sites

__all__ = ["GPProgram", "Hyper", "KIND_OPS", "KindOps", "PROFILES", "Kernel", "KernelLeaf", "KernelNode", "compile_kernel",
           "compile_program"]


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


# --------------------------------------------------------------------------------------
# The compiled kernel
# --------------------------------------------------------------------------------------


class Kernel(eqx.Module):
    """A compiled kernel: a base kernel (:class:`KernelLeaf`) or a sum or product (:class:`KernelNode`).

    ``theta`` maps site name -> constrained value of one output. Random features
    for pathwise draws come in top-level sum terms ("blocks"), ``per_block`` each.
    """

    @abc.abstractmethod
    def gram(self, theta: Mapping[str, Array], x1: Array, x2: Array, *, same: bool) -> Array:
        """Kernel matrix ``[N1, N2]``; ``same``: ``x1`` and ``x2`` are the same points (white terms count)."""

    @abc.abstractmethod
    def gram_diag(self, theta: Mapping[str, Array], x: Array, *, white: bool) -> Array:
        """Diagonal ``k(x_i, x_i)`` ``[N]``; white terms count only when ``white`` is True."""

    @abc.abstractmethod
    def leaves(self) -> tuple[KernelLeaf, ...]:
        """The base kernels, depth first."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The kernel as an expression, e.g. ``linear + periodic``."""

    @abc.abstractmethod
    def blocks(self) -> tuple[Kernel, ...]:
        """The top-level sum terms (the kernel itself when it is not a sum)."""

    @abc.abstractmethod
    def iid_sample(self, theta: Mapping[str, Array], key: PRNGKeyArray, f: int) -> Any:
        """Parameters of ``f`` i.i.d. zero-mean random features."""

    @abc.abstractmethod
    def iid_eval(self, theta: Mapping[str, Array], params: Any, x: Array, f: int) -> Array:
        """``[N, f]`` unit random features ``r_l(x)`` with ``E[r_l(x) r_l(x')] = k(x, x')``."""

    def all_hypers(self) -> tuple[Hyper, ...]:
        """Every hyperparameter site, depth first."""
        return tuple(h for leaf in self.leaves() for h in leaf.hypers)

    def has_white(self) -> bool:
        """Whether a white-noise term is part of the kernel."""
        return any(leaf.kind == "white" for leaf in self.leaves())

    def num_features(self, per_block: int) -> int:
        """Total feature count: ``per_block`` per sum term, exact linear terms their width."""
        return sum(len(b.dims) if _exact_linear(b) else per_block for b in self.blocks())

    def sample_features(self, theta: Mapping[str, Array], key: PRNGKeyArray, per_block: int) -> Any:
        """Random-feature parameters of one prior draw (one per top-level sum term)."""
        blocks = self.blocks()
        keys = jax.random.split(key, len(blocks))
        return [{} if _exact_linear(b) else b.iid_sample(theta, k, per_block) for b, k in zip(blocks, keys)]

    def eval_features(self, theta: Mapping[str, Array], params: Any, x: Array,
                      per_block: int) -> Float[Array, "N F"]:
        """Features ``phi(x)`` ``[N, F]`` with ``E[phi(x) . phi(x')] = k(x, x')`` (exact for linear)."""
        out = []
        for block, p in zip(self.blocks(), params):
            if _exact_linear(block):
                out.append(jnp.sqrt(theta[block.hyper("variance").site]) * block.columns(x))
            else:
                out.append(block.iid_eval(theta, p, x, per_block) / math.sqrt(per_block))
        return jnp.concatenate(out, axis=-1)


def _exact_linear(block: Kernel) -> bool:
    return isinstance(block, KernelLeaf) and block.kind == "linear" and not block.reflect


class KernelLeaf(Kernel):
    """A base kernel with its active columns resolved to indices.

    ``reflect`` (positions among the active columns) and ``reflect_centre`` make it
    even in those columns: ``R`` maps column ``c`` to ``reflect_centre - c`` (the
    reflection through the feature's raw 0, in model units), and the kernel is the
    average of the base kernel over ``{I, R}`` on both arguments. Its random features
    are the average ``(r(x) + r(Rx)) / 2``, whose second moment is that kernel exactly.
    """

    kind: str = eqx.field(static=True)
    dims: tuple[int, ...] = eqx.field(static=True)
    all_dims: bool = eqx.field(static=True)
    degree: int = eqx.field(static=True)
    hypers: tuple[Hyper, ...] = eqx.field(static=True)
    path: str = eqx.field(static=True)
    reflect: tuple[int, ...] = eqx.field(static=True, default=())
    reflect_centre: tuple[float, ...] = eqx.field(static=True, default=())

    def hyper(self, name: str) -> Hyper:
        """The hyperparameter called ``name``."""
        return next(h for h in self.hypers if h.name == name)

    def columns(self, x: Array) -> Array:
        """The kernel's active columns of ``x [N, D]``."""
        return x if self.all_dims else x[:, jnp.asarray(self.dims)]

    def params(self, theta: Mapping[str, Array]) -> dict[str, Array]:
        """Parameter name -> value, from site name -> value."""
        return {h.name: theta[h.site] for h in self.hypers}

    def reflected(self, a: Array) -> Array:
        """``R a``: the active columns ``a [N, d]`` with the even ones reflected."""
        idx = jnp.asarray(self.reflect)
        return a.at[:, idx].set(jnp.asarray(self.reflect_centre, a.dtype) - a[:, idx])

    def gram(self, theta: Mapping[str, Array], x1: Array, x2: Array, *, same: bool) -> Array:
        th = self.params(theta)
        a, b = self.columns(x1), self.columns(x2)
        gram = KIND_OPS[self.kind].gram
        if not self.reflect:
            return gram(self, th, a, b, same)
        ra, rb = self.reflected(a), self.reflected(b)
        return 0.25 * (gram(self, th, a, b, same) + gram(self, th, a, rb, False)
                       + gram(self, th, ra, b, False) + gram(self, th, ra, rb, same))

    def gram_diag(self, theta: Mapping[str, Array], x: Array, *, white: bool) -> Array:
        th = self.params(theta)
        a = self.columns(x)
        diag = KIND_OPS[self.kind].diag
        if not self.reflect:
            return diag(self, th, a, white)
        ra = self.reflected(a)
        cross = jax.vmap(lambda u, v: KIND_OPS[self.kind].gram(self, th, u[None], v[None], False)[0, 0])(a, ra)
        return 0.25 * (diag(self, th, a, white) + 2.0 * cross + diag(self, th, ra, white))

    def leaves(self) -> tuple[KernelLeaf, ...]:
        return (self,)

    def describe(self) -> str:
        return f"{self.kind}[even]" if self.reflect else self.kind

    def blocks(self) -> tuple[Kernel, ...]:
        return (self,)

    def iid_sample(self, theta: Mapping[str, Array], key: PRNGKeyArray, f: int) -> Any:
        th = self.params(theta)
        k_w, k_b, k_s = jax.random.split(key, 3)
        return FEATURES[self.kind].sample(self, th, (k_w, k_b, k_s), f)

    def iid_eval(self, theta: Mapping[str, Array], params: Any, x: Array, f: int) -> Array:
        th = self.params(theta)
        a = self.columns(x)
        evaluate = FEATURES[self.kind].evaluate
        if not self.reflect:
            return evaluate(self, th, params, a, f)
        return 0.5 * (evaluate(self, th, params, a, f) + evaluate(self, th, params, self.reflected(a), f))


class KernelNode(Kernel):
    """A sum or product of kernels."""

    op: Literal["sum", "product"] = eqx.field(static=True)
    terms: tuple[Kernel, ...] = eqx.field(static=True)
    path: str = eqx.field(static=True)

    def _combine(self, parts: list[Array]) -> Array:
        out = parts[0]
        for p in parts[1:]:
            out = out + p if self.op == "sum" else out * p
        return out

    def gram(self, theta: Mapping[str, Array], x1: Array, x2: Array, *, same: bool) -> Array:
        return self._combine([t.gram(theta, x1, x2, same=same) for t in self.terms])

    def gram_diag(self, theta: Mapping[str, Array], x: Array, *, white: bool) -> Array:
        return self._combine([t.gram_diag(theta, x, white=white) for t in self.terms])

    def leaves(self) -> tuple[KernelLeaf, ...]:
        return tuple(leaf for t in self.terms for leaf in t.leaves())

    def describe(self) -> str:
        parts = [t.describe() for t in self.terms]
        if self.op == "product":
            parts = [f"({p})" if " + " in p else p for p in parts]
            return " * ".join(parts)
        return " + ".join(parts)

    def blocks(self) -> tuple[Kernel, ...]:
        return self.terms if self.op == "sum" else (self,)

    def iid_sample(self, theta: Mapping[str, Array], key: PRNGKeyArray, f: int) -> Any:
        keys = jax.random.split(key, len(self.terms))
        return [t.iid_sample(theta, k, f) for t, k in zip(self.terms, keys)]

    def iid_eval(self, theta: Mapping[str, Array], params: Any, x: Array, f: int) -> Array:
        return self._combine([t.iid_eval(theta, p, x, f) for t, p in zip(self.terms, params)])


class GPProgram(eqx.Module):
    """Everything about a GP model that decides compiled code (hashable; no arrays).

    Attributes:
        kernel: the compiled kernel.
        noise: observation-noise standard deviation site.
        mean_constant: constant-mean site, or None for a zero mean.
        site_prefix: prefix of all site names (``terminal``, ``world`` ...).
        feature_names: names of the model's input features (columns it sees).
        noise_floor: a std added in quadrature to a learned noise (0 for a fixed
            one): the observation noise is ``sqrt(noise^2 + noise_floor^2)``.
    """

    kernel: Kernel = eqx.field(static=True)
    noise: Hyper = eqx.field(static=True)
    mean_constant: Hyper | None = eqx.field(static=True)
    site_prefix: str = eqx.field(static=True)
    feature_names: tuple[str, ...] = eqx.field(static=True)
    noise_floor: float = eqx.field(static=True, default=0.0)

    @property
    def input_dim(self) -> int:
        return len(self.feature_names)

    def anonymous(self) -> GPProgram:
        """The same program with its features unnamed (``x0, x1, ...``).

        Names matter for reports and error messages, not for computation: GP
        draws key their compiled code on this, so models over different
        features of the same shape (a sweep over features) share it.
        """
        def leaf(tree: Kernel) -> Kernel:
            if isinstance(tree, KernelLeaf):
                return replace(tree, hypers=tuple(replace(h, dim_names=()) for h in tree.hypers))
            return replace(tree, terms=tuple(leaf(t) for t in tree.terms))

        return replace(self, kernel=leaf(self.kernel),
                       feature_names=tuple(f"x{i}" for i in range(len(self.feature_names))))

    @property
    def hypers(self) -> tuple[Hyper, ...]:
        out = list(self.kernel.all_hypers()) + [self.noise]
        if self.mean_constant is not None:
            out.append(self.mean_constant)
        return tuple(out)

    @property
    def free_hypers(self) -> tuple[Hyper, ...]:
        return tuple(h for h in self.hypers if h.free)

    def describe(self) -> str:
        return self.kernel.describe()

    def training_covariance(self, theta: Mapping[str, Array], x: Array) -> Array:
        """``K(X, X) + noise^2 I`` for one output."""
        k = self.kernel.gram(theta, x, x, same=True)
        noise = theta[self.noise.site]
        return k + (noise * noise) * jnp.eye(x.shape[0], dtype=x.dtype)

    def mean_value(self, theta: Mapping[str, Array]) -> Array:
        """The prior mean (model units) of one output: its constant, or 0."""
        if self.mean_constant is None:
            return jnp.zeros(())
        return theta[self.mean_constant.site]


# --------------------------------------------------------------------------------------
# Compiling a spec
# --------------------------------------------------------------------------------------


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
                   path: str = "kernel", zero_at: Sequence[float] | None = None) -> Kernel:
    """Resolves a kernel spec into a :class:`Kernel` with site names.

    Args:
        kernel: a fixed kernel spec (base or composite; not a structure search).
        feature_names: names of the columns the model sees (``D`` of them).
        site_prefix: prefix of the site names.
        path: site path of this kernel below the prefix.
        zero_at: per feature, the model-unit coordinate of its raw value 0 (inputs are
            scaled to the unit cube: ``-low / (high - low)``); a kernel that is ``even``
            in a feature reflects through it. None: inputs are not shifted (0 stays 0).

    Returns:
        The compiled kernel; hyperparameters left unset get their default priors.
    """
    if isinstance(kernel, CompositeKernel):
        terms = tuple(
            compile_kernel(t, feature_names=feature_names, site_prefix=site_prefix, path=sites.term_path(path, i),
                           zero_at=zero_at)
            for i, t in enumerate(kernel.terms)
        )
        return KernelNode(kernel.kind, terms, path)
    if not isinstance(kernel, _KernelBase):
        raise TypeError(f"not a fixed kernel spec: {type(kernel).__name__}")
    dims = resolve_dims(kernel.active_dims, feature_names)
    d = len(dims)
    names = tuple(feature_names[i] for i in dims)
    hypers = []
    for param in KERNELS[kernel.kind].params:
        ard = getattr(kernel, "ard", False)
        shape = (d,) if (param == "lengthscale" and ard) else ()
        hypers.append(_make_hyper(param, sites.kernel_site(site_prefix, path, param), getattr(kernel, param, None), shape, d,
                                  names if shape else ()))
    degree = int(getattr(kernel, "degree", 1))
    reflect, centre = (), ()
    if getattr(kernel, "even", None):  # None or []: no invariance
        even = resolve_dims(kernel.even, feature_names)
        outside = [feature_names[i] for i in even if i not in dims]
        if outside:
            raise ValueError(f"kernel `even` names {outside}, which the kernel does not see; its active features"
                             f" are {list(names)}")
        zeros = [0.0] * len(feature_names) if zero_at is None else [float(z) for z in zero_at]
        reflect = tuple(dims.index(i) for i in even)
        centre = tuple(2.0 * zeros[i] for i in even)
    return KernelLeaf(kernel.kind, dims, dims == tuple(range(len(feature_names))), degree, tuple(hypers), path,
                      reflect, centre)


def compile_program(kernel: Any, *, noise: Any, mean: str, feature_names: Sequence[str],
                    site_prefix: str, noise_floor: float = 0.0,
                    zero_at: Sequence[float] | None = None) -> GPProgram:
    """Builds the :class:`GPProgram` of a GP spec (kernel, noise, mean).

    ``noise_floor`` applies to a learned noise only: a fixed noise is used as given.
    ``zero_at``: see :func:`compile_kernel` (where an ``even`` kernel reflects).
    """
    if zero_at is not None and len(zero_at) != len(feature_names):
        raise ValueError(f"zero_at needs one value per feature ({len(feature_names)}), got {len(zero_at)}")
    tree = compile_kernel(kernel, feature_names=feature_names, site_prefix=site_prefix, zero_at=zero_at)
    dim = len(feature_names)
    noise_h = _make_hyper("noise", sites.noise_site(site_prefix), noise, (), dim)
    if noise_h.fixed is not None and not noise_h.fixed > 0:
        raise ValueError(f"noise must be > 0, got {noise_h.fixed}")
    mean_h = None
    if mean == "constant":
        mean_h = _make_hyper("constant", sites.mean_site(site_prefix),
                             Prior(dist="Normal", params={"loc": 0.0, "scale": 1.0}), (), dim)
    elif mean != "zero":
        raise ValueError(f"mean must be 'zero' or 'constant', got {mean!r}")
    if not (math.isfinite(noise_floor) and noise_floor >= 0):
        raise ValueError(f"noise_floor must be a finite number >= 0, got {noise_floor}")
    floor = float(noise_floor) if noise_h.fixed is None else 0.0
    return GPProgram(tree, noise_h, mean_h, site_prefix, tuple(feature_names), floor)
