"""The experiment file: one pydantic model, in TOML and as Python objects.

The spec lives with the experiments, above the priors it is made of: `priors` knows no
environment and no experiment; this module checks a spec against its environment.

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from priorguard.experiments.env_spec import GymEnvTable, source_of
from priorguard.experiments.overrides import axis_overrides, check_path, set_path, sweep_axis_paths
from priorguard.models.roles import role_inputs
from priorguard.priors.distributions import _fail
from priorguard.priors.errors import SpecError, SpecIssue, allowed, did_you_mean
from priorguard.priors.kernels import CompositeKernel, StructureSearch, _KernelBase
from priorguard.priors.models import GPModel, InstrumentalSpec, ModelSpec
from priorguard.priors.spec_errors import spec_error


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


def _one_of_registered(value: str, names: list[str], what: str, error: str) -> str:
    """``value`` if it is a registered name, else a spec error naming the closest and the registered ones."""
    if value not in names:
        raise _fail(error, f"no {what} {value!r} is registered{did_you_mean(value, names)}; registered:"
                    f" {', '.join(names)} (a module that registers one must be imported before the spec is loaded)")
    return value


class VetoRuleSpec(_Strict):
    """A veto rule registered by name (:func:`priorguard.planners.register_veto_rule`), e.g. from a user's module."""

    name: str
    #: Keyword arguments of the rule's factory (plain TOML values).
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from priorguard.planners.veto import veto_rule_names  # lazy: only specs that name a rule pay for JAX

        return _one_of_registered(v, veto_rule_names(), "veto rule", "unknown_rule")


class VetoSpec(_Strict):
    """When the planner refuses an action."""

    enabled: bool = True
    #: Veto when the epistemic std of T + I exceeds this; "auto" calibrates it by
    #: split-conformal prediction so the in-distribution false-veto rate is <= alpha.
    epistemic_std: Annotated[Union[float, Literal["auto"]], Field(union_mode="left_to_right")] | None = "auto"
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    #: What "auto" calibrates on: "decisions" -- the planner's own decisions on fresh
    #: train-split episodes in closed loop (every candidate it checks; the false-veto
    #: guarantee is about the decisions it makes); or the behaviour policy's held-out
    #: episodes: "distinct" -- each episode's states once each, "visits" -- every step.
    calibrate_on: Literal["decisions", "distinct", "visits"] = "decisions"
    #: When every candidate is vetoed at an observation where the episode fell back
    #: before (a veto loop): "abstain" -- ask for help (the episode ends there, counted
    #: in abstain_rate), or "fallback" -- take the fallback again.
    on_repeat: Literal["abstain", "fallback"] = "abstain"
    #: Veto when the predicted value falls below the current state's by more than this.
    #: "auto" calibrates it as the epistemic threshold is (closed loop, on the planner's
    #: own decisions; with both "auto", each at alpha / 2, so together at most alpha). A
    #: fixed number carries no false-veto guarantee.
    value_drop: Annotated[Union[float, Literal["auto"]], Field(union_mode="left_to_right")] | None = None
    #: Action taken when every candidate is vetoed: an action index (discrete)
    #: or an action vector (continuous).
    fallback: int | list[float] = 0
    #: Further rules, by registered name, chained after the built-in ones (None: none).
    rules: list[VetoRuleSpec] | None = None

    @field_validator("epistemic_std", "value_drop")
    @classmethod
    def _positive_threshold(cls, v: Any) -> Any:
        if isinstance(v, float | int) and not v > 0:
            raise _fail("range", f"must be > 0 or \"auto\", got {v}")
        return v

    @model_validator(mode="after")
    def _auto_drop_in_closed_loop(self) -> VetoSpec:
        if self.value_drop == "auto" and self.calibrate_on != "decisions":
            raise _fail("calibrate_on", 'value_drop = "auto" is calibrated on the planner\'s own decisions:'
                        ' it needs calibrate_on = "decisions"', param="value_drop")
        return self

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

    #: A registered planner kind: "one_step", "mcts", "cem", or one added with
    #: :func:`priorguard.experiments.drivers.register_planner`.
    kind: str = "one_step"
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

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, v: str) -> str:
        from priorguard.experiments.drivers import planner_kinds

        return _one_of_registered(v, list(planner_kinds()), "planner kind", "unknown_planner")


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
    #: A built-in environment's id, or an ``[env]`` table naming any gymnasium environment.
    env: str | GymEnvTable
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

    def source(self) -> Any:
        """The environment as a run reads it (:class:`priorguard.envs.source.EnvSource`)."""
        return source_of(self.env)

    @property
    def env_label(self) -> str:
        """How runs and reports name the environment: the id, or the table's name."""
        return self.env if isinstance(self.env, str) else self.env.label

    @model_validator(mode="after")
    def _check_against_env(self) -> ExperimentSpec:
        from priorguard.envs import list_envs  # lazy: envs never import priors
        from priorguard.envs.gym_source import GymConfigError

        if isinstance(self.env, str):
            known = list_envs()
            if self.env not in known:
                raise _fail("unknown_env", f"unknown environment {self.env!r}{did_you_mean(self.env, known)};"
                            f" known: {allowed(known)} (or an [env] table naming any gymnasium environment)",
                            param="env")
        try:
            source = self.source()
        except GymConfigError as err:
            raise _fail("env", err.message, param=f"env.{err.field}") from None
        info = source.info
        env_name = self.env_label
        for role in ("terminal", "world", "instrumental", "termination"):
            model = getattr(self, role)
            if model is None:
                continue
            if model.features is not None:
                for i, feat in enumerate(model.features):
                    if feat not in info.feature_names:
                        raise _fail(
                            "unknown_feature",
                            f"{env_name} has no feature {feat!r}{did_you_mean(feat, info.feature_names)};"
                            f" its features are {', '.join(info.feature_names)}",
                            param=f"{role}.features[{i}]",
                        )
            if isinstance(model, GPModel):
                names = list(model.features or info.feature_names)
                if role == "world":  # W also sees the action, after its features
                    names += list(info.action_input_names)
                _check_active_dims(model.kernel, names, f"{role}.kernel")
            if model.parents:
                _check_parents(self, role, model, info)
        fallback = self.planner.veto.fallback
        from priorguard.experiments.drivers import planner_kinds

        kinds = planner_kinds()
        if info.action_kind not in kinds[self.planner.kind]:
            suits = [k for k, spaces in kinds.items() if info.action_kind in spaces]
            raise _fail("planner_kind", f"{self.planner.kind} plans {' or '.join(kinds[self.planner.kind])} actions;"
                        f" {env_name} has {info.action_kind} actions (use {' or '.join(suits)})",
                        param="planner.kind")
        if info.action_kind == "discrete":
            if not isinstance(fallback, int):
                raise _fail("fallback", f"{env_name} has discrete actions: fallback must be an action index"
                            f" in 0..{info.num_actions - 1}", param="planner.veto.fallback")
            if fallback >= info.num_actions:
                raise _fail("fallback", f"must be an action index in 0..{info.num_actions - 1}, got {fallback}",
                            param="planner.veto.fallback")
            logits = self.planner.proposal.logits
            if logits is not None and len(logits) != info.num_actions:
                raise _fail("logits", f"needs {info.num_actions} logits (one per action), got {len(logits)}",
                            param="planner.proposal.logits")
        else:
            dim = len(info.action_low)
            vec = [float(fallback)] * dim if isinstance(fallback, int) else fallback
            if len(vec) != dim or any(not lo <= x <= hi for x, lo, hi in zip(vec, info.action_low, info.action_high)):
                raise _fail("fallback", f"must be an action vector of length {dim} within"
                            f" [{list(info.action_low)}, {list(info.action_high)}], got {fallback}",
                            param="planner.veto.fallback")
        if self.planner.proposal.kind == "fixed" and self.planner.proposal.logits is None:
            raise _fail("logits", "a fixed proposal needs `logits`", param="planner.proposal.logits")
        if self.data.behaviour not in source.policy_names():
            names = source.policy_names()
            raise _fail("behaviour", f"{env_name} has no policy {self.data.behaviour!r}"
                        f"{did_you_mean(self.data.behaviour, names)}; it has {', '.join(names)}",
                        param="data.behaviour")
        return self

    def model_roles(self) -> dict[str, ModelSpec]:
        """Role name -> model spec, for the roles this experiment has (T, W, then I and D if set)."""
        roles = {"terminal": self.terminal, "world": self.world, "instrumental": self.instrumental,
                 "termination": self.termination}
        return {role: model for role, model in roles.items() if model is not None}

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
            raise spec_error(err, cls, source) from None
        spec.check_sweep(source=source)
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form (what TOML holds); defaults are written out."""
        return _drop_none(self.model_dump(mode="json", by_alias=True))

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
            set_path(data, path, value)
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
                    base.with_overrides(axis_overrides(key, value))
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
                point.update(axis_overrides(key, value))
            yield point

    def expand(self) -> list[tuple[dict[str, Any], ExperimentSpec, int]]:
        """Every (overrides, resolved spec without sweep, seed) of the sweep grid x seeds."""
        base = self.model_copy(update={"sweep": {}})
        out = []
        for point in self.sweep_points():
            resolved = base.with_overrides(point) if point else base
            out.extend((point, resolved, seed) for seed in self.seeds)
        return out


def world_outputs(spec: ExperimentSpec, all_features: Sequence[str]) -> tuple[int, ...]:
    """Observation columns an experiment's W predicts the change of: those some model reads.

    T, W, I and D read their ``features``; a proposal policy A that is fitted to
    states (``behaviour``, ``learned``) reads them all. Imagined transitions keep
    the other columns as they are, since no model would see them change, and W
    spends no fit or planning time on them.
    """
    if spec.planner.proposal.kind in ("behaviour", "learned"):
        return tuple(range(len(all_features)))
    read = set(role_inputs(spec.terminal, all_features)) | set(role_inputs(spec.world, all_features))
    for role in (spec.instrumental, spec.termination):
        if role is not None:
            read |= set(role_inputs(role, all_features))
    return tuple(sorted(read))


def _check_parents(spec: ExperimentSpec, role: str, model: Any, info: Any) -> None:
    from priorguard.models.factored import parents_problem

    if role != "world":
        raise _fail("parents", "only W has `parents` (T, I and D have one output)", param=f"{role}.parents")
    outputs = [info.feature_names[c] for c in world_outputs(spec, info.feature_names)]
    problem = parents_problem(model, outputs, list(model.features or info.feature_names), info.action_input_names)
    if problem:
        raise _fail("parents", problem[1], param=f"world.parents.{problem[0]}")


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


