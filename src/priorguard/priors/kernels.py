"""Kernel specs: base kernels with hyperpriors, sums and products, structure search.

A kernel says which situations count as alike. Every base kernel carries its
hyperparameters as :class:`~priorguard.priors.distributions.Prior` (or fixed
numbers); those not given get the documented weakly informative defaults of
:func:`default_prior`, resolved when the input dimension is known.

Kernel inputs are the model's features scaled to [0, 1] by the ranges the
environment declares, and targets are standardised, so the defaults below are
on that scale.

Example:
    >>> k = parse_kernel({"kind": "sum", "terms": [{"kind": "matern52"}, {"kind": "linear"}]})
    >>> [t.kind for t in k.terms]
    ['matern52', 'linear']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from priorguard.priors.distributions import Prior, Support, _fail, check_support
from priorguard.priors.errors import allowed, did_you_mean

STATIONARY = ("rbf", "matern12", "matern32", "matern52")
COMPOSITE_KINDS = ("sum", "product")

#: The domain each built-in kernel hyperparameter must live in.
PARAM_SUPPORT: dict[str, Support] = {
    "lengthscale": "positive",
    "variance": "positive",
    "alpha": "positive",
    "period": "positive",
    "shift": "nonnegative",
}

ParamValue = Annotated[Union[float, Prior], Field(union_mode="left_to_right")]
_PARAM: TypeAdapter[Any] = TypeAdapter(ParamValue)


def default_prior(param: str, dim: int) -> Prior:
    """The weakly informative default prior of a kernel hyperparameter.

    Lengthscales follow BoTorch's dimension-scaled prior (Hvarfner et al.,
    2024): ``LogNormal(sqrt(2) + log(dim) / 2, sqrt(3))``, so the prior median
    lengthscale grows like sqrt(dim) on unit-cube inputs and high-dimensional
    models are not forced to be wiggly.

    Args:
        param: hyperparameter name (``lengthscale``, ``variance``, ``alpha``,
            ``period``, ``shift``, ``noise``).
        dim: number of input dimensions the kernel sees.

    Returns:
        The default :class:`Prior`.

    Example:
        >>> default_prior("lengthscale", 1).describe()
        'LogNormal(loc=1.41421, scale=1.73205)'
    """
    if param == "lengthscale":
        return Prior(dist="LogNormal", params={"loc": math.sqrt(2.0) + 0.5 * math.log(max(dim, 1)),
                                               "scale": math.sqrt(3.0)})
    if param in ("variance", "alpha"):
        return Prior(dist="LogNormal", params={"loc": 0.0, "scale": 1.0})
    if param == "period":
        return Prior(dist="LogNormal", params={"loc": math.log(0.5), "scale": 0.5})
    if param == "shift":
        return Prior(dist="HalfNormal", params={"scale": 1.0})
    if param == "noise":
        return Prior(dist="LogNormal", params={"loc": -2.0, "scale": 1.0})
    raise KeyError(param)


class _KernelBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    #: Feature names (or column indices into the model's features) this kernel sees;
    #: None means all of them.
    active_dims: list[str | int] | None = None
    #: An invariance in the prior: features (names or indices, among the kernel's active
    #: ones) in which every function the kernel draws is *even*, jointly:
    #: ``f(x) = f(x')`` where ``x'`` is ``x`` with these features negated (reflected
    #: through 0 in the feature's own units). The kernel is averaged over the
    #: reflection (``k_even = (k(x,y) + k(x,Ry) + k(Rx,y) + k(Rx,Ry)) / 4``), so data on
    #: one side of 0 informs the other exactly as much as its own side. ``[]``: none
    #: (as when left out; handy in a sweep).
    even: list[str | int] | None = None

    @model_validator(mode="after")
    def _check_supports(self) -> Any:
        if self.even is not None and getattr(self, "kind", "") == "white":
            raise _fail("even_white", "a white kernel is noise, not a function: `even` does not apply to it")
        kind = KERNELS.get(getattr(self, "kind", ""))
        for name in kind.params if kind is not None else ():
            value = getattr(self, name, None)
            if value is None:
                continue
            problem = check_support(value, kind.supports[name], path=name)
            if problem:
                raise _fail("prior_support", problem, param=name)
        return self

    @field_validator("active_dims", "even")
    @classmethod
    def _nonempty_dims(cls, v: list[str | int] | None, info: ValidationInfo) -> list[str | int] | None:
        if v is not None:
            if not v and info.field_name == "active_dims":
                raise _fail("empty", "must name at least one feature, or be left out to use all")
            if len(set(map(str, v))) != len(v):
                raise _fail("duplicates", f"has duplicates: {v}")
            for d in v:
                if isinstance(d, int) and d < 0:
                    raise _fail("range", f"column indices must be >= 0, got {d}")
        return v

    def prior_of(self, param: str, dim: int) -> Prior | float:
        """The declared prior of ``param``, or its default for ``dim`` inputs."""
        value = getattr(self, param, None)
        if value is not None:
            return value
        kind = KERNELS.get(getattr(self, "kind", ""))
        if kind is not None and param in kind.defaults:
            return kind.defaults[param]
        return default_prior(param, dim)


class StationaryKernel(_KernelBase):
    """RBF and Matern kernels: ``variance * k(|x - x'| / lengthscale)``."""

    kind: Literal["rbf", "matern12", "matern32", "matern52"]
    lengthscale: ParamValue | None = None
    variance: ParamValue | None = None
    #: One lengthscale per input dimension (automatic relevance determination).
    ard: bool = True


class RationalQuadraticKernel(_KernelBase):
    """Scale mixture of RBFs: ``variance * (1 + r^2 / (2 alpha))^-alpha``."""

    kind: Literal["rational_quadratic"]
    lengthscale: ParamValue | None = None
    variance: ParamValue | None = None
    alpha: ParamValue | None = None
    ard: bool = True


class PeriodicKernel(_KernelBase):
    """Exactly repeating structure with a period."""

    kind: Literal["periodic"]
    lengthscale: ParamValue | None = None
    variance: ParamValue | None = None
    period: ParamValue | None = None
    ard: bool = True


class LinearKernel(_KernelBase):
    """``variance * x . x'`` — Bayesian linear regression."""

    kind: Literal["linear"]
    variance: ParamValue | None = None


class PolynomialKernel(_KernelBase):
    """``(shift + variance * x . x') ** degree``."""

    kind: Literal["polynomial"]
    degree: int = Field(default=2, ge=1, le=10)
    variance: ParamValue | None = None
    shift: ParamValue | None = None


class WhiteKernel(_KernelBase):
    """Independent noise on the diagonal."""

    kind: Literal["white"]
    variance: ParamValue | None = None


class CustomKernel(_KernelBase):
    """A kernel kind added with :func:`register_kernel`: its hyperparameters are keys of the table
    (each a number or a prior), checked against the kind's declared parameters and supports."""

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)

    kind: str
    #: One lengthscale per input dimension, where the kind has a ``lengthscale``.
    ard: bool = True

    @model_validator(mode="before")
    @classmethod
    def _declared_params(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = KERNELS.get(data.get("kind", ""))
        if kind is None or kind.spec is not CustomKernel:
            raise _fail("unknown_kernel", f"{data.get('kind')!r} is not a registered kernel kind")
        out = dict(data)
        known = {"kind", "ard", "active_dims", "even", *kind.params}
        for key, value in data.items():
            if key not in known:
                raise _fail("unknown_param", f"unknown key {key!r}{did_you_mean(key, kind.params)};"
                            f" the {kind.name} kernel's hyperparameters are {', '.join(kind.params)}")
            if key in kind.params and value is not None:
                out[key] = _PARAM.validate_python(value)
        return out


class CompositeKernel(BaseModel):
    """Sum or product of kernels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sum", "product"]
    terms: list[KernelSpec] = Field(min_length=2)


class StructureSearch(BaseModel):
    """A prior over kernel structures (the simplicity prior).

    Structures are sums of products of base kernels drawn from ``search``,
    with at most ``max_terms`` base kernels in all;
    ``p(structure) ∝ exp(-simplicity * DL(structure)) * cost(structure) ** -speed``
    where DL is the description length in nats and cost the flops per kernel
    entry (see docs/priors.md and :mod:`priorguard.priors.structure`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    search: list[str] = Field(min_length=1)
    max_terms: int = Field(default=2, ge=1, le=4)
    simplicity: float = Field(default=1.0, ge=0.0)
    speed: float = Field(default=0.0, ge=0.0)
    operators: list[Literal["sum", "product"]] = Field(default_factory=lambda: ["sum", "product"], min_length=1)
    #: Evidence approximation for the structure posterior.
    evidence: Literal["laplace", "bic"] = "laplace"
    ard: bool = True

    @field_validator("search")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in KERNELS:
                raise _fail(
                    "unknown_kernel",
                    f"unknown base kernel {name!r}{did_you_mean(name, KERNELS)}; allowed: {allowed(KERNELS)}",
                )
        if len(set(v)) != len(v):
            raise _fail("duplicates", f"lists a kernel twice: {v}")
        return v


@dataclass(frozen=True)
class KernelKind:
    """One base kernel kind: everything the spec, the structure prior and the GP read of it.

    Attributes:
        name: the ``kind`` a spec writes.
        spec: the spec class that validates its table.
        params: its hyperparameters, in order (``lengthscale`` is per dimension with ARD).
        flops: ``(per input dimension, constant)`` flops per kernel entry (the speed prior's cost).
        supports: the domain each hyperparameter's prior must live in.
        defaults: default priors of hyperparameters :func:`default_prior` does not know.
    """

    name: str
    spec: type[_KernelBase]
    params: tuple[str, ...]
    flops: tuple[int, int]
    supports: dict[str, Support] = field(default_factory=dict)
    defaults: dict[str, Prior] = field(default_factory=dict)


def _builtin(name: str, spec: type[_KernelBase], params: tuple[str, ...], flops: tuple[int, int]) -> KernelKind:
    return KernelKind(name, spec, params, flops, {p: PARAM_SUPPORT[p] for p in params})


#: The one table of base kernel kinds (the compiled side is ``priorguard.models.gp.kinds.KIND_OPS``).
KERNELS: dict[str, KernelKind] = {k.name: k for k in (
    _builtin("rbf", StationaryKernel, ("lengthscale", "variance"), (3, 2)),
    _builtin("matern12", StationaryKernel, ("lengthscale", "variance"), (3, 4)),
    _builtin("matern32", StationaryKernel, ("lengthscale", "variance"), (3, 6)),
    _builtin("matern52", StationaryKernel, ("lengthscale", "variance"), (3, 8)),
    _builtin("rational_quadratic", RationalQuadraticKernel, ("lengthscale", "variance", "alpha"), (3, 6)),
    _builtin("periodic", PeriodicKernel, ("lengthscale", "variance", "period"), (4, 6)),
    _builtin("linear", LinearKernel, ("variance",), (2, 1)),
    _builtin("polynomial", PolynomialKernel, ("variance", "shift"), (2, 3)),
    _builtin("white", WhiteKernel, ("variance",), (0, 1)),
)}

#: The built-in base kinds and all built-in kinds (registered kinds are in `KERNELS`).
BASE_KINDS = tuple(KERNELS)
KERNEL_KINDS = (*BASE_KINDS, *COMPOSITE_KINDS)


def register_kernel(name: str, *, params: dict[str, Support], flops: tuple[int, int] = (3, 2),
                    defaults: dict[str, Any] | None = None) -> KernelKind:
    """Adds a base kernel kind from any module; a spec's kernel table may then name it.

    Its table holds ``kind``, ``active_dims``, ``ard`` and one key per hyperparameter (a
    number or a prior). The GP side needs its compiled gram and random features too
    (:func:`priorguard.models.gp.kernels.register_kernel_ops`).

    Args:
        name: the new ``kind``.
        params: hyperparameter -> support ("positive", "nonnegative", "real"), in order.
        flops: ``(per dimension, constant)`` flops per kernel entry, for speed priors.
        defaults: default priors (tables as a spec writes them) of hyperparameters that
            :func:`default_prior` does not know.

    Raises:
        ValueError: the name is taken.
    """
    if name in KERNELS or name in COMPOSITE_KINDS:
        raise ValueError(f"kernel kind {name!r} is already registered")
    priors = {k: v if isinstance(v, Prior) else Prior.model_validate(v) for k, v in (defaults or {}).items()}
    kind = KernelKind(name, CustomKernel, tuple(params), tuple(flops), dict(params), priors)
    KERNELS[name] = kind
    return kind


def kernel_kinds() -> tuple[str, ...]:
    """Every kind a kernel table may name now: the base kinds (built-in and registered), sum, product."""
    return (*KERNELS, *COMPOSITE_KINDS)


def _kernel_tag(v: Any) -> str | None:
    if isinstance(v, dict):
        if "search" in v:
            return "kernel:search"
        kind = v.get("kind")
        if kind is None:
            return None
        if kind in KERNELS:
            return f"kernel:{KERNELS[kind].spec.__name__}"
        if kind in COMPOSITE_KINDS:
            return "kernel:composite"
        return str(kind)
    if isinstance(v, StructureSearch):
        return "kernel:search"
    if isinstance(v, CompositeKernel):
        return "kernel:composite"
    if isinstance(v, _KernelBase):
        return f"kernel:{type(v).__name__}"
    return None


KernelSpec = Annotated[
    Union[
        Annotated[StationaryKernel, Tag("kernel:StationaryKernel")],
        Annotated[RationalQuadraticKernel, Tag("kernel:RationalQuadraticKernel")],
        Annotated[PeriodicKernel, Tag("kernel:PeriodicKernel")],
        Annotated[LinearKernel, Tag("kernel:LinearKernel")],
        Annotated[PolynomialKernel, Tag("kernel:PolynomialKernel")],
        Annotated[WhiteKernel, Tag("kernel:WhiteKernel")],
        Annotated[CustomKernel, Tag("kernel:CustomKernel")],
        Annotated[CompositeKernel, Tag("kernel:composite")],
    ],
    Discriminator(
        _kernel_tag,
        custom_error_type="unknown_kernel",
        custom_error_message="kernel needs `kind`, one of " + ", ".join(KERNEL_KINDS),
    ),
]

KernelOrSearch = Annotated[
    Union[KernelSpec, Annotated[StructureSearch, Tag("kernel:search")]],
    Discriminator(
        lambda v: "kernel:search" if _kernel_tag(v) == "kernel:search" else "kernel:fixed",
    ),
]
# The outer union needs the fixed branch tagged as a whole.
KernelOrSearch = Annotated[
    Union[Annotated[KernelSpec, Tag("kernel:fixed")], Annotated[StructureSearch, Tag("kernel:search")]],
    Discriminator(lambda v: "kernel:search" if _kernel_tag(v) == "kernel:search" else "kernel:fixed"),
]

CompositeKernel.model_rebuild()
_KERNEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(KernelOrSearch)


def parse_kernel(data: Any) -> Any:
    """Validates a kernel table (base, composite or structure search)."""
    return _KERNEL_ADAPTER.validate_python(data)


def base_kernels(kernel: Any) -> list[_KernelBase]:
    """The base kernels of a (possibly composite) kernel, depth first."""
    if isinstance(kernel, CompositeKernel):
        return [leaf for term in kernel.terms for leaf in base_kernels(term)]
    if isinstance(kernel, _KernelBase):
        return [kernel]
    raise TypeError(f"not a fixed kernel: {type(kernel).__name__}")


def describe_kernel(kernel: Any) -> str:
    """A compact expression, e.g. ``matern52 + linear``."""
    if isinstance(kernel, CompositeKernel):
        op = " + " if kernel.kind == "sum" else " * "
        parts = [describe_kernel(t) for t in kernel.terms]
        if kernel.kind == "product":
            parts = [f"({p})" if " + " in p else p for p in parts]
        return op.join(parts)
    if isinstance(kernel, StructureSearch):
        return f"search({', '.join(kernel.search)}; max_terms={kernel.max_terms})"
    return kernel.kind
