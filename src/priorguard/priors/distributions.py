"""Declarative distributions: any numpyro distribution by name, with hyperpriors.

A :class:`Prior` is written ``{ dist = "LogNormal", loc = 0.0, scale = 1.0 }``
with numpyro's own parameter names. A parameter is a fixed number or itself a
:class:`Prior` (a hyperprior). Validation is eager and pure Python (no JAX
tracing): unknown distributions and parameters are rejected with the closest
name, fixed values are checked against numpyro's ``arg_constraints``, and the
distribution's support is checked against what the parameter it is a prior for
needs (a ``Normal`` cannot be a prior on a lengthscale).

Example:
    >>> p = Prior(dist="LogNormal", loc=0.0, scale=1.0)
    >>> p.params
    {'loc': 0.0, 'scale': 1.0}
    >>> check_support(p, "positive", path="x") is None
    True
"""

from __future__ import annotations

import inspect
import math
from functools import cache
from typing import Any, Literal

import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from pydantic import BaseModel, ConfigDict, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from priorguard.priors.errors import allowed, did_you_mean


def _fail(kind: str, message: str, *, param: str | None = None) -> PydanticCustomError:
    """A pydantic error with a ready-made message; ``param`` extends the path."""
    ctx = {"param": param} if param is not None else None
    return PydanticCustomError(kind, message, ctx)

Support = Literal["real", "positive", "nonnegative", "unit_interval"]


@cache
def distribution_names() -> dict[str, type[dist.Distribution]]:
    """Every concrete numpyro distribution usable in a spec, by class name."""
    out: dict[str, type[dist.Distribution]] = {}
    for name in dist.__all__:
        obj = getattr(dist, name, None)
        if inspect.isclass(obj) and issubclass(obj, dist.Distribution) and not inspect.isabstract(obj):
            if name in {"Distribution", "ExpandedDistribution", "MaskedDistribution",
                        "Independent", "TransformedDistribution", "Delta", "Unit",
                        "ImproperUniform", "MixtureGeneral", "MixtureSameFamily", "FoldedDistribution"}:
                continue
            out[name] = obj
    # TruncatedNormal is a factory function in numpyro, not a class.
    out["TruncatedNormal"] = dist.TruncatedNormal  # type: ignore[assignment]
    return out


def _init_params(cls: Any) -> list[str]:
    fn = cls if inspect.isfunction(cls) else cls.__init__
    sig = inspect.signature(fn)
    return [
        p.name
        for p in sig.parameters.values()
        if p.name not in {"self", "validate_args"} and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _required_params(cls: Any) -> list[str]:
    fn = cls if inspect.isfunction(cls) else cls.__init__
    sig = inspect.signature(fn)
    return [
        p.name
        for p in sig.parameters.values()
        if p.name not in {"self", "validate_args"}
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is inspect.Parameter.empty
    ]


def _arg_constraints(name: str) -> dict[str, Any]:
    cls = distribution_names()[name]
    if name == "TruncatedNormal":
        return {"loc": constraints.real, "scale": constraints.positive,
                "low": constraints.real, "high": constraints.real}
    return dict(getattr(cls, "arg_constraints", {}))


def _constraint_ok(c: Any, value: float) -> tuple[bool, str]:
    """Pure-Python check of a numpyro constraint on a scalar."""
    if isinstance(c, constraints._Real) or c is constraints.real:
        return math.isfinite(value), "a finite real number"
    if isinstance(c, constraints._Interval):
        lo, hi = float(c.lower_bound), float(c.upper_bound)
        return lo <= value <= hi, f"in [{lo:g}, {hi:g}]"
    if isinstance(c, constraints._GreaterThanEq):
        return value >= float(c.lower_bound), f">= {float(c.lower_bound):g}"
    if isinstance(c, constraints._GreaterThan):
        return value > float(c.lower_bound), f"> {float(c.lower_bound):g}"
    if isinstance(c, constraints._IntegerGreaterThan | constraints._IntegerNonnegative):
        lb = int(c.lower_bound)
        return value == int(value) and value >= lb, f"an integer >= {lb}"
    if isinstance(c, constraints._Boolean):
        return value in (0, 1), "0 or 1"
    try:  # anything else: numpyro's own check, eagerly on a numpy scalar
        return bool(np.all(np.asarray(c(np.asarray(value))))), str(c)
    except Exception:  # pragma: no cover - exotic constraints
        return True, str(c)


def _dist_support(name: str, params: dict[str, Any]) -> Any:
    """The support constraint of a distribution, resolving dependent supports."""
    cls = distribution_names()[name]
    if name == "TruncatedNormal":
        low = params.get("low")
        high = params.get("high")
        low = -math.inf if low is None else low
        high = math.inf if high is None else high
        if isinstance(low, Prior) or isinstance(high, Prior):
            return None
        return ("interval", float(low), float(high))
    support = cls.__dict__.get("support", getattr(cls, "support", None))
    for klass in cls.__mro__:
        if "support" in klass.__dict__:
            support = klass.__dict__["support"]
            break
    if isinstance(support, constraints.dependent_property | property):
        if name == "Uniform":
            low, high = params.get("low", 0.0), params.get("high", 1.0)
            if isinstance(low, Prior) or isinstance(high, Prior):
                return None
            return ("interval", float(low), float(high))
        return None
    return support


def _support_fits(support: Any, required: Support) -> bool | None:
    """Whether a support is contained in the required one (None: unknown)."""
    if support is None:
        return None
    if isinstance(support, tuple):
        _, lo, hi = support
        return {
            "real": True,
            "positive": lo >= 0.0,
            "nonnegative": lo >= 0.0,
            "unit_interval": lo >= 0.0 and hi <= 1.0,
        }[required]
    if getattr(support, "is_discrete", False) or getattr(support, "event_dim", 0) != 0:
        return False
    if required == "real":
        return True
    if isinstance(support, constraints._Interval):
        lo, hi = float(support.lower_bound), float(support.upper_bound)
        return lo >= 0.0 and (required != "unit_interval" or hi <= 1.0)
    if isinstance(support, constraints._GreaterThan | constraints._GreaterThanEq):
        return float(support.lower_bound) >= 0.0 and required != "unit_interval"
    return False


def _support_name(support: Any) -> str:
    if isinstance(support, tuple):
        return f"[{support[1]:g}, {support[2]:g}]"
    return {
        "_Real": "the whole real line",
        "_Positive": "(0, inf)",
    }.get(type(support).__name__, str(support))


class Prior(BaseModel):
    """A distribution by numpyro name; parameters are numbers or hyperpriors.

    Attributes:
        dist: numpyro distribution class name, e.g. ``"LogNormal"``.
        params: parameter name -> fixed float or nested :class:`Prior`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dist: str
    params: dict[str, float | Prior] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather_params(cls, data: Any) -> Any:
        if isinstance(data, Prior):
            return data
        if not isinstance(data, dict):
            raise _fail(
                "prior_type",
                'expected a number or a distribution table like { dist = "LogNormal", loc = 0.0,'
                f" scale = 1.0 }}, got {data!r}",
            )
        if "params" in data and set(data) <= {"dist", "params"}:
            return data
        if "dist" not in data:
            raise _fail(
                "prior_missing_dist",
                f"a distribution table needs `dist` (a numpyro distribution name); got keys {sorted(data)}",
            )
        name = data["dist"]
        if not isinstance(name, str):
            raise _fail("prior_dist_type", f"`dist` must be a string, got {name!r}", param="dist")
        names = distribution_names()
        if name not in names:
            raise _fail(
                "unknown_distribution",
                f"unknown distribution {name!r}{did_you_mean(name, names)}; numpyro distributions"
                f" include {allowed(names)}",
                param="dist",
            )
        params = {k: v for k, v in data.items() if k != "dist"}
        return {"dist": name, "params": params}

    @model_validator(mode="after")
    def _check_params(self) -> Prior:
        cls = distribution_names()[self.dist]
        known = _init_params(cls)
        for key in self.params:
            if key not in known:
                raise _fail(
                    "unknown_parameter",
                    f"{self.dist} has no parameter {key!r}{did_you_mean(key, known)};"
                    f" its parameters are {', '.join(known)}",
                    param=key,
                )
        missing = [p for p in _required_params(cls) if p not in self.params]
        if missing:
            raise _fail("missing_parameter", f"{self.dist} needs {', '.join(repr(m) for m in missing)}")
        arg_cons = _arg_constraints(self.dist)
        for key, value in self.params.items():
            if isinstance(value, Prior):
                continue
            if not math.isfinite(value):
                raise _fail("nonfinite", f"must be finite, got {value}", param=key)
            c = arg_cons.get(key)
            if c is not None and not isinstance(c, constraints._Dependent):
                ok, what = _constraint_ok(c, float(value))
                if not ok:
                    raise _fail("parameter_range", f"must be {what}, got {float(value)}", param=key)
        for key, value in self.params.items():
            if isinstance(value, Prior):
                c = arg_cons.get(key)
                required = _required_support(c)
                if required is not None:
                    fits = _support_fits(_dist_support(value.dist, value.params), required)
                    if fits is False:
                        raise _fail(
                            "hyperprior_support",
                            f"a {value.dist} hyperprior has support outside what {self.dist}.{key}"
                            f" allows ({required})",
                            param=key,
                        )
        if self.dist in ("Uniform", "TruncatedNormal"):
            low, high = self.params.get("low"), self.params.get("high")
            if isinstance(low, float | int) and isinstance(high, float | int) and not low < high:
                raise _fail("interval_order", f"{self.dist} needs low < high, got low={low}, high={high}")
        return self

    @model_serializer(mode="wrap")
    def _flatten(self, handler: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.dist}
        for key, value in self.params.items():
            out[key] = value.model_dump() if isinstance(value, Prior) else value
        return out

    def to_numpyro(self, site: str | None = None) -> dist.Distribution:
        """The numpyro distribution; nested hyperpriors are sampled as sites.

        Args:
            site: base site name used for hyperprior sites (``{site}/{param}``);
                needed only when a parameter is itself a prior.

        Returns:
            A numpyro distribution (call inside a numpyro model when nested).
        """
        kwargs: dict[str, Any] = {}
        for key, value in self.params.items():
            if isinstance(value, Prior):
                if site is None:
                    raise ValueError(f"{self.dist}.{key} is a hyperprior: a site name is needed")
                hyper = f"{site}/{key}"  # sites.hyperprior_site (distributions sit below sites)
                kwargs[key] = numpyro.sample(hyper, value.to_numpyro(hyper))
            else:
                kwargs[key] = float(value)
        return distribution_names()[self.dist](**kwargs)

    @property
    def has_hyperpriors(self) -> bool:
        return any(isinstance(v, Prior) for v in self.params.values())

    def describe(self) -> str:
        inner = ", ".join(
            f"{k}={v.describe() if isinstance(v, Prior) else f'{v:g}'}" for k, v in self.params.items()
        )
        return f"{self.dist}({inner})"


def _required_support(c: Any) -> Support | None:
    if c is None:
        return None
    if isinstance(c, constraints._Positive | constraints._SoftplusPositive):
        return "positive"
    if isinstance(c, constraints._Nonnegative):
        return "nonnegative"
    if isinstance(c, constraints._UnitInterval):
        return "unit_interval"
    if isinstance(c, constraints._Real):
        return "real"
    return None


def check_support(prior: Prior | float, required: Support, *, path: str) -> str | None:
    """Checks that a prior (or fixed value) lives where a parameter needs it.

    Args:
        prior: the declared prior or fixed number.
        required: the parameter's domain.
        path: dotted path, used in the message.

    Returns:
        None when fine, else a message saying what was found and what is allowed.
    """
    if not isinstance(prior, Prior):
        value = float(prior)
        ok = {
            "real": math.isfinite(value),
            "positive": math.isfinite(value) and value > 0,
            "nonnegative": math.isfinite(value) and value >= 0,
            "unit_interval": 0.0 <= value <= 1.0,
        }[required]
        return None if ok else f"must be {_domain_words(required)}, got {value}"
    support = _dist_support(prior.dist, prior.params)
    fits = _support_fits(support, required)
    if fits is False:
        return (
            f"a {prior.dist} prior has support {_support_name(support)}, but this parameter must be"
            f" {_domain_words(required)}; use e.g. LogNormal, HalfNormal, Gamma or Exponential"
            if required in ("positive", "nonnegative")
            else f"a {prior.dist} prior does not fit a parameter that must be {_domain_words(required)}"
        )
    return None


def _domain_words(required: Support) -> str:
    return {
        "real": "a finite real number",
        "positive": "> 0",
        "nonnegative": ">= 0",
        "unit_interval": "in [0, 1]",
    }[required]
