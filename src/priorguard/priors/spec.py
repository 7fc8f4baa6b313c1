"""The experiment file: one pydantic model, in TOML and as Python objects.

A spec is validated eagerly, before any JAX tracing. Every problem is reported
with its dotted field path, what was found and what is allowed, and the
closest name for unknown keys, distributions and kernels.

Example:
    >>> spec = ExperimentSpec.from_toml('''
    ... name = "tiny"
    ... env = "priorguard/CoinShift-v1"
    ... [terminal]
    ... model = "gp"
    ... [world]
    ... model = "bnn"
    ... ''')
    >>> spec.terminal.kernel.kind
    'rbf'
    >>> ExperimentSpec.from_toml(spec.to_toml()) == spec
    True
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from priorguard.priors.distributions import Prior, _fail
from priorguard.priors.errors import SpecError, SpecIssue, allowed, did_you_mean
from priorguard.priors.kernels import (
    BASE_KINDS,
    KERNEL_KINDS,
    CompositeKernel,
    StructureSearch,
    _KernelBase,
    base_kernels,
)
from priorguard.priors.models import (
    BNNModel,
    GPModel,
    InstrumentalSpec,
    ModelSpec,
)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DataSpec(_Strict):
    """How train-split data is collected and split."""

    train_episodes: int = Field(default=200, ge=1, le=1_000_000)
    #: Evaluation episodes on the deploy split (and as many on the train split, for false vetoes).
    deploy_episodes: int = Field(default=50, ge=1, le=1_000_000)
    #: Behaviour policy for data collection: a reference policy of the env.
    behaviour: str = "behaviour"
    #: Fraction of train-split states held out to calibrate vetoes and check coverage.
    calibration_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    #: Cap on the number of points each model is fitted on (subsampled with the run's key;
    #: the count is rounded down to one of eight sizes per octave, at most 1/8 fewer,
    #: so every seed fits models of the same shapes and reuses compiled code).
    max_points: int = Field(default=2000, ge=10, le=10_000_000)
    #: Standard deviation of the rater's label noise on terminal values.
    rater_noise: float = Field(default=0.0, ge=0.0)


class VetoSpec(_Strict):
    """When the planner refuses an action."""

    enabled: bool = True
    #: Veto when the epistemic std of T + I exceeds this; "auto" calibrates it by
    #: split-conformal prediction so the in-distribution false-veto rate is <= alpha.
    epistemic_std: Annotated[Union[float, Literal["auto"]], Field(union_mode="left_to_right")] | None = "auto"
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    #: Which held-out states "auto" calibrates on: "distinct" -- each held-out episode's
    #: states once each (how long a policy dwells in a state does not weight the
    #: threshold), or "visits" -- every step, repeats included.
    calibrate_on: Literal["distinct", "visits"] = "distinct"
    #: Veto when the predicted value falls below the current state's by more than this.
    value_drop: float | None = Field(default=None, gt=0.0)
    #: Action taken when every candidate is vetoed: an action index (discrete)
    #: or an action vector (continuous).
    fallback: int | list[float] = 0

    @field_validator("epistemic_std")
    @classmethod
    def _positive_threshold(cls, v: Any) -> Any:
        if isinstance(v, float | int) and not v > 0:
            raise _fail("range", f"must be > 0 or \"auto\", got {v}")
        return v

    @field_validator("fallback")
    @classmethod
    def _fallback_ok(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise _fail("range", f"an action index must be >= 0, got {v}")
        if isinstance(v, list) and not all(math.isfinite(x) for x in v):
            raise _fail("nonfinite", f"must be finite, got {v}")
        return v


class ProposalSpec(_Strict):
    """The proposal policy A: where candidate actions come from."""

    kind: Literal["uniform", "behaviour", "learned", "fixed"] = "uniform"
    #: For "learned": how A is trained on the train split.
    objective: Literal["imitation", "policy_gradient"] = "imitation"
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [64], max_length=4)
    steps: int = Field(default=500, ge=1)
    #: For "fixed": logits over discrete actions.
    logits: list[float] | None = None


class CemSpec(_Strict):
    """Cross-entropy method settings for continuous actions."""

    iterations: int = Field(default=5, ge=1, le=100)
    population: int = Field(default=64, ge=2, le=100_000)
    elites: int = Field(default=8, ge=1)
    horizon: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _elites_fit(self) -> CemSpec:
        if self.elites > self.population:
            raise _fail("range", f"must be <= population ({self.population}), got {self.elites}", param="elites")
        return self


class PlannerSpec(_Strict):
    """The hard-coded planner that checks A's proposals with T, I and W."""

    kind: Literal["one_step", "mcts", "cem"] = "one_step"
    proposals: int = Field(default=8, ge=1, le=4096)
    simulations: int = Field(default=64, ge=1, le=100_000)
    depth: int = Field(default=8, ge=1, le=1000)
    #: Number of posterior function draws (sampled worlds) per decision.
    function_samples: int = Field(default=16, ge=1, le=4096)
    #: Random features per kernel term in each GP function draw (the prior part of
    #: pathwise conditioning); planning cost grows linearly with it.
    function_features: int = Field(default=512, ge=16, le=65_536)
    policy: Literal["gumbel", "muzero"] = "gumbel"
    #: Lower-confidence-bound scoring: mean - lcb_kappa * std.
    lcb_kappa: float = Field(default=0.0, ge=0.0)
    proposal: ProposalSpec = Field(default_factory=ProposalSpec)
    cem: CemSpec = Field(default_factory=CemSpec)
    veto: VetoSpec = Field(default_factory=VetoSpec)


class AuditSpec(_Strict):
    """Random-state audit through W and adversarial state search."""

    states: int = Field(default=1000, ge=1, le=10_000_000)
    horizon: int = Field(default=5, ge=1, le=1000)
    #: A state is misaligned when true value drops by more than this.
    margin: float = Field(default=0.5, ge=0.0)
    level: float = Field(default=0.95, gt=0.0, lt=1.0)
    adversarial_restarts: int = Field(default=8, ge=0, le=10_000)
    adversarial_steps: int = Field(default=100, ge=1, le=100_000)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ExperimentSpec(_Strict):
    """A whole experiment: environment, data, the T/W/I/D models and their priors, planner, sweep."""

    name: str
    description: str = ""
    env: str
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    data: DataSpec = Field(default_factory=DataSpec)
    terminal: ModelSpec
    world: ModelSpec
    instrumental: InstrumentalSpec | None = None
    #: D, the termination model: whether an episode ends in a state, regressed on
    #: the 0/1 end-of-episode label of every state the agent saw. Planning and I's
    #: targets weight what follows a state by ``1 - clip(D, 0, 1)``. None: no
    #: state ends an episode in imagination.
    termination: ModelSpec | None = None
    planner: PlannerSpec = Field(default_factory=PlannerSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    #: Dotted field path -> list of values; the grid of these times ``seeds``. A key of
    #: several comma-separated paths is one linked axis: each of its values is a list
    #: with one value per path, set together (``"terminal.features, instrumental.features"
    #: = [[["x"], ["x"]], [["dx"], ["dx"]]]``).
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise _fail("name", f"must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit; got {v!r}")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise _fail("duplicates", f"has duplicates: {v}")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep_lists(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise _fail("empty", f"{key!r} needs at least one value")
            paths = sweep_axis_paths(key)
            if len(paths) > 1:
                if len(set(paths)) != len(paths) or not all(paths):
                    raise _fail("linked_axis", f"{key!r}: a linked axis needs distinct, non-empty paths")
                for i, value in enumerate(values):
                    if not isinstance(value, list) or len(value) != len(paths):
                        raise _fail("linked_axis", f"{key!r}[{i}]: a linked axis of {len(paths)} paths needs a"
                                    f" list of {len(paths)} values (one per path), got {value!r}")
        return v

    @model_validator(mode="after")
    def _check_against_env(self) -> ExperimentSpec:
        from priorguard.envs import env_info, list_envs  # lazy: envs never import priors

        known = list_envs()
        if self.env not in known:
            raise _fail("unknown_env", f"unknown environment {self.env!r}{did_you_mean(self.env, known)};"
                        f" known: {allowed(known)}", param="env")
        info = env_info(self.env)
        for role in ("terminal", "world", "instrumental", "termination"):
            model = getattr(self, role)
            if model is None:
                continue
            if model.features is not None:
                for i, feat in enumerate(model.features):
                    if feat not in info.feature_names:
                        raise _fail(
                            "unknown_feature",
                            f"{self.env} has no feature {feat!r}{did_you_mean(feat, info.feature_names)};"
                            f" its features are {', '.join(info.feature_names)}",
                            param=f"{role}.features[{i}]",
                        )
            if isinstance(model, GPModel):
                names = list(model.features or info.feature_names)
                if role == "world":  # W also sees the action, after its features
                    names += list(info.action_input_names)
                _check_active_dims(model.kernel, names, f"{role}.kernel")
        fallback = self.planner.veto.fallback
        if info.action_kind == "discrete":
            if self.planner.kind == "cem":
                raise _fail("planner_kind", f"cem plans continuous actions; {self.env} has discrete actions"
                            " (use one_step or mcts)", param="planner.kind")
            if not isinstance(fallback, int):
                raise _fail("fallback", f"{self.env} has discrete actions: fallback must be an action index"
                            f" in 0..{info.num_actions - 1}", param="planner.veto.fallback")
            if fallback >= info.num_actions:
                raise _fail("fallback", f"must be an action index in 0..{info.num_actions - 1}, got {fallback}",
                            param="planner.veto.fallback")
            logits = self.planner.proposal.logits
            if logits is not None and len(logits) != info.num_actions:
                raise _fail("logits", f"needs {info.num_actions} logits (one per action), got {len(logits)}",
                            param="planner.proposal.logits")
        else:
            if self.planner.kind == "mcts":
                raise _fail("planner_kind", f"mcts plans discrete actions; {self.env} has continuous actions"
                            " (use cem or one_step)", param="planner.kind")
            dim = len(info.action_low)
            vec = [float(fallback)] * dim if isinstance(fallback, int) else fallback
            if len(vec) != dim or any(not lo <= x <= hi for x, lo, hi in zip(vec, info.action_low, info.action_high)):
                raise _fail("fallback", f"must be an action vector of length {dim} within"
                            f" [{list(info.action_low)}, {list(info.action_high)}], got {fallback}",
                            param="planner.veto.fallback")
        if self.planner.proposal.kind == "fixed" and self.planner.proposal.logits is None:
            raise _fail("logits", "a fixed proposal needs `logits`", param="planner.proposal.logits")
        if self.data.behaviour not in _reference_policy_names(self.env):
            names = _reference_policy_names(self.env)
            raise _fail("behaviour", f"{self.env} has no policy {self.data.behaviour!r}"
                        f"{did_you_mean(self.data.behaviour, names)}; it has {', '.join(names)}",
                        param="data.behaviour")
        return self

    # --- TOML -----------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, *, source: str | None = None) -> ExperimentSpec:
        """Parses and validates TOML text; raises :class:`SpecError` on bad input."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SpecError.single("<toml>", f"TOML syntax error: {err}", source) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> ExperimentSpec:
        """Validates a plain mapping (as TOML parses it); raises :class:`SpecError`."""
        try:
            spec = cls.model_validate(dict(data))
        except ValidationError as err:
            raise spec_error(err, data, source) from None
        spec.check_sweep(source=source)
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form (what TOML holds); defaults are written out."""
        return _drop_none(self.model_dump(mode="json"))

    def to_toml(self) -> str:
        """TOML text that parses back to an equal spec."""
        return tomli_w.dumps(self.to_dict())

    # --- overrides and sweeps ----------------------------------------------------

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str | None = None) -> ExperimentSpec:
        """A new spec with dotted paths set (``{"terminal.kernel.kind": "matern52"}``)."""
        data = self.to_dict()
        for path, value in overrides.items():
            problem = check_path(self, path)
            if problem:
                raise SpecError.single(path, problem, source)
            _set_path(data, path, value)
        return type(self).from_dict(data, source=source)

    def check_sweep(self, *, source: str | None = None) -> None:
        """Every sweep path exists and every value (and the grid, when small) validates."""
        issues: list[SpecIssue] = []
        base = self.model_copy(update={"sweep": {}})
        for key, values in self.sweep.items():
            paths = sweep_axis_paths(key)
            problems = [p for p in (check_path(base, path) for path in paths) if p]
            if problems:
                issues.extend(SpecIssue(f'sweep."{key}"', problem) for problem in problems)
                continue
            for i, value in enumerate(values):
                try:
                    base.with_overrides(_axis_overrides(key, value))
                except SpecError as err:
                    for issue in err.issues:
                        issues.append(SpecIssue(f'sweep."{key}"[{i}]', f"{value!r} is invalid here: {issue}"))
        if not issues and self.sweep and math.prod(len(v) for v in self.sweep.values()) <= 64:
            for point in self.sweep_points():
                try:
                    base.with_overrides(point)
                except SpecError as err:
                    issues.extend(SpecIssue("sweep", f"the combination {point} is invalid: {i}") for i in err.issues)
                    break
        if issues:
            raise SpecError(issues, source)

    def sweep_points(self) -> Iterator[dict[str, Any]]:
        """Each point of the sweep grid as a dict of overrides (one empty point without a sweep)."""
        keys = list(self.sweep)
        for combo in itertools.product(*(self.sweep[k] for k in keys)):
            point: dict[str, Any] = {}
            for key, value in zip(keys, combo):
                point.update(_axis_overrides(key, value))
            yield point

    def expand(self) -> list[tuple[dict[str, Any], ExperimentSpec, int]]:
        """Every (overrides, resolved spec without sweep, seed) of the sweep grid x seeds."""
        base = self.model_copy(update={"sweep": {}})
        out = []
        for point in self.sweep_points():
            resolved = base.with_overrides(point) if point else base
            out.extend((point, resolved, seed) for seed in self.seeds)
        return out


def _reference_policy_names(env_id: str) -> list[str]:
    from priorguard.envs import reference_policies

    return sorted(reference_policies(env_id))


def _check_active_dims(kernel: Any, names: list[str], path: str) -> None:
    if isinstance(kernel, StructureSearch):
        return
    if isinstance(kernel, CompositeKernel):
        for i, term in enumerate(kernel.terms):
            _check_active_dims(term, names, f"{path}.terms[{i}]")
        return
    if isinstance(kernel, _KernelBase) and kernel.active_dims is not None:
        for j, d in enumerate(kernel.active_dims):
            if isinstance(d, int) and d >= len(names):
                raise _fail("active_dims", f"column {d} is out of range: the model sees {len(names)} features"
                            f" ({', '.join(names)})", param=f"{path}.active_dims[{j}]")
            if isinstance(d, str) and d not in names:
                raise _fail("active_dims", f"{d!r} is not among the model's features"
                            f"{did_you_mean(d, names)}: {', '.join(names)}", param=f"{path}.active_dims[{j}]")


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


# --- dotted paths ------------------------------------------------------------------


def _split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in path.split("."):
        m = re.fullmatch(r"([^\[\]]+)((?:\[\d+\])*)", token)
        if not m:
            raise ValueError(token)
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def sweep_axis_paths(key: str) -> list[str]:
    """The field paths of a sweep key: one, or several (comma-separated) for a linked axis."""
    return [part.strip() for part in key.split(",")]


def _axis_overrides(key: str, value: Any) -> dict[str, Any]:
    paths = sweep_axis_paths(key)
    return {paths[0]: value} if len(paths) == 1 else dict(zip(paths, value))


def check_path(spec: BaseModel, path: str) -> str | None:
    """None when ``path`` names a field of ``spec`` (set or not), else what is wrong."""
    try:
        parts = _split_path(path)
    except ValueError:
        return f"not a dotted field path: {path!r}"
    node: Any = spec
    for depth, part in enumerate(parts):
        here = ".".join(map(str, parts[:depth])) or "the spec"
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"{here} has no item [{part}]"
            node = node[part]
            continue
        if isinstance(node, Prior):
            if part == "dist" or part in node.params:
                node = node.params.get(part)
                continue
            return f"{node.dist} prior at {here} has no parameter {part!r}{did_you_mean(part, list(node.params))}"
        if not isinstance(node, BaseModel):
            if node is None and depth == len(parts) - 1:
                return None
            return f"{here} is a value, not a table, so it has no field {part!r}"
        fields = type(node).model_fields
        if part not in fields:
            return f"{here} has no field {part!r}{did_you_mean(part, fields)}; its fields are {', '.join(fields)}"
        node = getattr(node, part)
    return None


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    parts = _split_path(path)
    node: Any = data
    for part, nxt in zip(parts[:-1], parts[1:]):
        if isinstance(part, int):
            node = node[part]
            continue
        if not isinstance(node.get(part), dict | list):
            node[part] = {} if isinstance(nxt, str) else []
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def parse_override(text: str) -> tuple[str, Any]:
    """Parses ``path=value`` (the value as TOML, else a bare string)."""
    if "=" not in text:
        raise SpecError.single("--set", f"expected path=value, got {text!r}")
    path, raw = text.split("=", 1)
    path, raw = path.strip(), raw.strip()
    if not path:
        raise SpecError.single("--set", f"empty path in {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


# --- turning pydantic errors into SpecIssues -------------------------------------------

_SCALAR_TYPES = {"float_type", "float_parsing", "int_type", "int_parsing", "finite_number", "bool_type",
                 "string_type", "literal_error"}

_DISCRIMINATOR_KEYS = {"unknown_kernel": "kind", "unknown_model": "model", "unknown_method": "method",
                       "unknown_simplicity": "kind"}

_INTERNAL = re.compile(r"^(float|int|str|bool|none|list\[.*|dict\[.*|function-.*|literal\[.*|.*\[.*\].*)$")


def _tag_classes() -> dict[str, type[BaseModel]]:
    from priorguard.priors import kernels as k
    from priorguard.priors import models as m

    out: dict[str, type[BaseModel]] = {
        "kernel:StationaryKernel": k.StationaryKernel,
        "kernel:RationalQuadraticKernel": k.RationalQuadraticKernel,
        "kernel:PeriodicKernel": k.PeriodicKernel,
        "kernel:LinearKernel": k.LinearKernel,
        "kernel:PolynomialKernel": k.PolynomialKernel,
        "kernel:WhiteKernel": k.WhiteKernel,
        "kernel:composite": k.CompositeKernel,
        "kernel:search": k.StructureSearch,
        "inference:map": m.MapInference,
        "inference:nuts": m.NutsInference,
        "inference:svi": m.SviInference,
        "inference:ensemble": m.EnsembleInference,
        "simplicity:horseshoe": m.Horseshoe,
        "simplicity:regularized_horseshoe": m.RegularisedHorseshoe,
    }
    return out


def _model_class_of(annotation: Any) -> type[BaseModel] | None:
    """The single BaseModel class inside an annotation (Optional/list/Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_class_of(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin in (list, Union) or str(origin) == "types.UnionType" or origin is not None:
        found = [c for a in typing.get_args(annotation) if (c := _model_class_of(a)) is not None]
        return found[0] if len(found) == 1 else None
    return None


def _class_at(loc: tuple[Any, ...], data: Any) -> type[BaseModel] | None:
    """The model class validating the table at raw pydantic ``loc``."""
    from priorguard.priors import models as m

    tags = _tag_classes()
    cls: type[BaseModel] | None = ExperimentSpec
    for i, part in enumerate(loc):
        if isinstance(part, str) and part in tags:
            cls = tags[part]
        elif isinstance(part, str) and part.startswith("model:"):
            parent = loc[i - 1] if i else None
            kind = part.split(":", 1)[1]
            if parent == "instrumental":
                cls = {"gp": m.InstrumentalGP, "bnn": m.InstrumentalBNN}.get(kind)
            else:
                cls = {"gp": m.GPModel, "bnn": m.BNNModel}.get(kind)
        elif isinstance(part, int) or cls is None or _INTERNAL.match(str(part)) or _is_tag(part):
            continue
        elif part in cls.model_fields:
            inner = _model_class_of(cls.model_fields[part].annotation)
            cls = inner
        else:
            return cls
    return cls


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and ":" in part and part.split(":")[0] in {"kernel", "inference", "simplicity",
                                                                             "model"}


def _clean(loc: tuple[Any, ...]) -> list[Any]:
    out = []
    for part in loc:
        if _is_tag(part):
            continue
        if isinstance(part, str) and _INTERNAL.match(part):
            continue
        out.append(part)
    return out


def _fmt_path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z0-9_\-]+|[a-z_]+\.[a-z_.\[\]0-9]+", part):
            out += ("." if out else "") + part
        else:
            out += ("." if out else "") + f'"{part}"'
    return out or "<spec>"


def _message(err: dict[str, Any], loc: tuple[Any, ...], data: Any) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        cls = _class_at(loc[:-1], data)
        key = loc[-1]
        fields = list(cls.model_fields) if cls else []
        return f"unknown key {key!r}{did_you_mean(str(key), fields)}; allowed keys: {', '.join(fields)}"
    if kind == "missing":
        return "is required but missing"
    if kind == "unknown_kernel" and isinstance(value, dict):
        found = value.get("kind")
        if found is None:
            return f"a kernel needs `kind` (one of {', '.join(KERNEL_KINDS)}) or `search` (a structure search)"
        return f"unknown kernel kind {found!r}{did_you_mean(str(found), KERNEL_KINDS)}; allowed: {', '.join(KERNEL_KINDS)}"
    if kind in ("unknown_model", "unknown_method", "unknown_simplicity") and isinstance(value, dict):
        key = {"unknown_model": "model", "unknown_method": "method", "unknown_simplicity": "kind"}[kind]
        choices = {
            "unknown_model": ["gp", "bnn"],
            "unknown_method": ["map", "nuts", "svi", "ensemble"],
            "unknown_simplicity": ["horseshoe", "regularized_horseshoe"],
        }[kind]
        found = value.get(key)
        head = err["msg"]
        if found is None:
            return f"{head} (`{key}` is missing)"
        return f"{head}; got {found!r}{did_you_mean(str(found), choices)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        options = re.findall(r"'([^']*)'", expected)
        hint = did_you_mean(str(value), options) if isinstance(value, str) else ""
        return f"got {value!r}{hint}; allowed: {expected}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}, got {value!r}"
    if kind in ("too_short", "too_long"):
        return f"{err['msg'].replace('List', 'list').replace('Value', 'value')}; got {value!r}"
    if kind in ("finite_number",):
        return f"must be a finite number, got {value!r}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{err['msg'][0].lower() + err['msg'][1:]}; got {value!r} ({type(value).__name__})"
    return err["msg"]


def spec_error(err: ValidationError, data: Any, source: str | None = None) -> SpecError:
    """Turns a pydantic ``ValidationError`` into a :class:`SpecError` with clean paths."""
    grouped: dict[str, list[tuple[dict[str, Any], tuple[Any, ...]]]] = {}
    errors = err.errors(include_url=False)
    paths = [_fmt_path(_clean(tuple(e["loc"]))) for e in errors]
    kept = []
    for i, e in enumerate(errors):
        # A number-or-prior field fails in both union branches; when a table was written,
        # the number branch's complaint is noise if the table branch said something.
        if isinstance(e.get("input"), dict) and e["type"] in _SCALAR_TYPES and any(
            j != i and errors[j]["type"] not in _SCALAR_TYPES and paths[j].startswith(paths[i])
            for j in range(len(errors))
        ):
            continue
        kept.append(e)
    for e in kept:
        loc = tuple(e["loc"])
        parts = _clean(loc)
        param = (e.get("ctx") or {}).get("param")
        if param:
            parts = parts + [param]
        key = _DISCRIMINATOR_KEYS.get(e["type"])
        if key and isinstance(e.get("input"), dict) and key in e["input"]:
            parts = parts + [key]
        grouped.setdefault(_fmt_path(parts), []).append((e, loc))
    issues = []
    for path, errs in grouped.items():
        # A number-or-prior field reports a failure from each branch: keep the branch
        # that matches what was written.
        value = errs[0][0].get("input")
        if len(errs) > 1:
            if isinstance(value, dict):
                keep = [x for x in errs if not x[0]["type"].startswith(("float", "int", "finite", "bool",
                                                                          "string", "literal"))]
            else:
                keep = [x for x in errs if x[0]["type"] not in ("prior_type", "model_type", "dict_type")]
            errs = keep or errs
        seen = set()
        for e, loc in errs:
            msg = _message(e, loc, data)
            if msg not in seen:
                seen.add(msg)
                issues.append(SpecIssue(path, msg))
    return SpecError(issues, source)


def load_spec(path_or_name: str | Path) -> ExperimentSpec:
    """Loads a spec from a TOML file, or a shipped experiment by name.

    Raises:
        SpecError: the file is missing, not TOML, or not a valid spec.
    """
    from priorguard.experiments.catalog import shipped_experiments

    path = Path(path_or_name)
    if not path.exists():
        shipped = shipped_experiments()
        name = str(path_or_name)
        if name in shipped:
            path = shipped[name]
        else:
            raise SpecError.single(
                "<spec>",
                f"no such file or shipped experiment: {name!r}{did_you_mean(name, shipped)};"
                f" shipped: {', '.join(sorted(shipped)) or 'none'}",
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError.single("<spec>", f"cannot read {path}: {err}") from None
    return ExperimentSpec.from_toml(text, source=str(path))


__all__ = [
    "AuditSpec",
    "BASE_KINDS",
    "CemSpec",
    "DataSpec",
    "ExperimentSpec",
    "PlannerSpec",
    "ProposalSpec",
    "VetoSpec",
    "check_path",
    "load_spec",
    "parse_override",
    "spec_error",
]

_ = (BNNModel, base_kernels)
