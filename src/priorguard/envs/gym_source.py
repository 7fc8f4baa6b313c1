"""`GymSource`: any gymnasium environment as a run reads it, from its id and a feature map.

A run needs nothing but transitions: the features of each state, the action, the rater's
label (the reward, or a declared function of it) and whether the episode ended. Everything
else is optional and declared where the environment has it:

- the true value of a state (an ``info`` key or a function; otherwise the rater's label);
- catastrophes (an ``info`` key or a function); with them, whether an action not taken would
  have been catastrophic is found by stepping a copy of the environment (``copy.deepcopy``);
- an oracle policy (regret); without one, regrets are n/a.

There is no JAX model of the dynamics: I's true values are n/a, and audits draw their states
from the states the run observed.

Every "module:function" path is imported and checked when the source is built, and the
feature map is called on a reset and on one step of each split: a missing function, one that
raises or returns names that change, the wrong length or NaN is a `GymConfigError` naming the
field, before any data is collected.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from priorguard.envs.base import EnvInfo
from priorguard.envs.source import EnvSource, SourcePolicy, Step, StepEnv

__all__ = ["GymConfig", "GymConfigError", "GymSource"]


class GymConfigError(ValueError):
    """A bad ``[env]`` table: ``field`` is its key (e.g. ``"features"``), the message says what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class GymConfig:
    """An ``[env]`` table (see docs/environments.md, "Your own environment").

    Attributes:
        train, deploy: the gymnasium ids of the two splits (the same id for both when the
            split is a keyword argument, see ``split_kwarg``).
        split_kwarg: pass ``split="train"`` / ``"deploy"`` to ``gymnasium.make`` (one id).
        kwargs: keyword arguments of ``gymnasium.make`` for both splits; ``train_kwargs`` and
            ``deploy_kwargs`` add to them per split.
        imports: modules imported first (so that their ids register).
        features: ``"module:function"`` from ``(observation, info, env)`` to ``{name: float}``,
            or the names of a flat Box observation's columns.
        ranges: declared ``{name: (low, high)}``; the others come from the observation space
            where finite, else from the training data.
        behaviour, oracle: ``"module:function"`` policies ``(features, rng[, env]) -> action``, or
            ``"random"``; no oracle: regrets are n/a.
        value, catastrophe: an ``info`` key or ``"module:function"`` of ``(observation, info, env)``.
        rater: ``"module:function"`` of ``(observation, reward, info, env)``: the rater's label
            (default: the reward).
        horizon: the most steps of an episode (default: the id's ``max_episode_steps``, or an
            unwrapped ``max_steps``).
        action_names: names of the discrete actions.
        name: how runs name the environment.
    """

    train: str
    deploy: str
    split_kwarg: bool = False
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    deploy_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    imports: tuple[str, ...] = ()
    features: str | tuple[str, ...] = ()
    ranges: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    behaviour: str = "random"
    oracle: str | None = None
    value: str | None = None
    catastrophe: str | None = None
    rater: str | None = None
    horizon: int | None = None
    action_names: tuple[str, ...] | None = None
    name: str | None = None


_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve(field: str, path: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` path names; a `GymConfigError` naming ``field`` otherwise."""
    if not _PATH.match(path):
        raise GymConfigError(field, f"must be a 'module:function' path, got {path!r}")
    module_name, name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 -- any import failure is the user's module
        raise GymConfigError(field, f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        names = [n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise GymConfigError(field, f"module {module_name!r} has no function {name!r}{hint}")
    return fn


#: Extras of priorguard that install a module an [env] table may import.
_EXTRAS = {"minigrid": "minigrid"}


def _import(imports: tuple[str, ...]) -> None:
    for i, module in enumerate(imports):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001
            top = module.split(".")[0]
            hint = (f"; install it with pip install 'priorguard[{_EXTRAS[top]}]'"
                    if isinstance(exc, ModuleNotFoundError) and top in _EXTRAS else "")
            raise GymConfigError(f"import[{i}]", f"cannot import {module!r} ({type(exc).__name__}: {exc}){hint}") from None


def _check_id(field: str, env_id: str) -> None:
    if env_id in gymnasium.registry:
        return
    close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=3, cutoff=0.5)
    hint = f"; closest registered: {', '.join(close)}" if close else ""
    raise GymConfigError(field, f"no gymnasium environment {env_id!r} is registered{hint} (name the module that"
                                f" registers it in env.import, e.g. import = [\"minigrid\"])")


def _takes_env(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


class _FeatureMap:
    """Observation (+ info, env) -> float64 features ``[F]``, checked at every call."""

    def __init__(self, features: str | tuple[str, ...]):
        self.fn = resolve("features", features) if isinstance(features, str) else None
        self.names: tuple[str, ...] | None = None if isinstance(features, str) else tuple(features)

    def __call__(self, obs: Any, info: Mapping[str, Any], env: Any) -> np.ndarray:
        if self.fn is None:
            values = np.asarray(obs, np.float64).reshape(-1)
            if values.shape[0] != len(self.names):
                raise GymConfigError("features", f"names {len(self.names)} columns, but the observation has"
                                                 f" {values.shape[0]}")
        else:
            try:
                out = self.fn(obs, info, env)
            except Exception as exc:  # noqa: BLE001 -- the user's function
                raise GymConfigError("features", f"the feature function raised {type(exc).__name__}: {exc}") from None
            if not isinstance(out, Mapping):
                raise GymConfigError("features", "the feature function must return a mapping {name: float},"
                                                 f" got {type(out).__name__}")
            names = tuple(out)
            if self.names is None:
                self.names = names
            elif names != self.names:
                raise GymConfigError("features", f"the feature function returned {list(names)}, earlier"
                                                 f" {list(self.names)}: the names and their order must not change")
            try:
                values = np.asarray([float(v) for v in out.values()], np.float64)
            except (TypeError, ValueError) as exc:
                raise GymConfigError("features", f"every feature must be a number ({exc})") from None
        if not np.isfinite(values).all():
            bad = [n for n, v in zip(self.names, values) if not math.isfinite(v)]
            raise GymConfigError("features", f"non-finite feature values: {bad}")
        return values


class _Truth:
    """An optional ``info`` key or function of ``(obs, info, env)`` (value, catastrophe)."""

    def __init__(self, field: str, spec: str | None):
        self.field, self.key, self.fn = field, None, None
        if spec is None:
            return
        if ":" in spec:
            self.fn = resolve(field, spec)
        else:
            self.key = spec

    @property
    def declared(self) -> bool:
        return self.key is not None or self.fn is not None

    def __call__(self, obs: Any, info: Mapping[str, Any], env: Any, default: Any) -> Any:
        if self.fn is not None:
            return self.fn(obs, info, env)
        if self.key is not None:
            if self.key not in info:
                raise GymConfigError(self.field, f"the step's info has no key {self.key!r}; it has {sorted(info)}")
            return info[self.key]
        return default


class GymStepEnv(StepEnv):
    """One episode of a gymnasium environment, in features."""

    def __init__(self, source: GymSource, split: str):
        self.source = source
        self.env = source.make_raw(split)
        self.raw = self.env.unwrapped
        self.horizon = source.info.horizon
        self._t = 0

    def reset(self, seed: int) -> np.ndarray:
        obs, info = self.env.reset(seed=int(seed))
        self._t = 0
        return self.source.features(obs, info, self.raw)

    def step(self, action: Any) -> Step:
        src = self.source
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        raw = self.raw
        rater = float(src.rater_fn(obs, reward, info, raw)) if src.rater_fn is not None else float(reward)
        value = float(src.value(obs, info, raw, rater))
        catastrophe = bool(src.catastrophe(obs, info, raw, False))
        return Step(src.features(obs, info, raw), rater, value, catastrophe, {}, bool(terminated),
                    bool(truncated) or (not terminated and self._t >= self.horizon))

    def catastrophic(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        src = self.source
        if not src.catastrophe.declared:
            return None
        out = np.zeros(len(candidates), bool)
        for k, cand in enumerate(candidates):
            probe = copy.deepcopy(self.env)
            obs, _, _, _, info = probe.step(src.as_action(cand))
            out[k] = bool(src.catastrophe(obs, info, probe.unwrapped, False))
        return out


class GymSource(EnvSource):
    """Any gymnasium environment with a Discrete or Box action space (see `GymConfig`).

    Raises:
        GymConfigError: for an unregistered id, a path that does not resolve, a feature map
            that fails on a reset or a step, or an unsupported action space.
    """

    def __init__(self, config: GymConfig):
        self.config = config
        _import(config.imports)
        fields = ("id", "id") if config.split_kwarg else ("train", "deploy")
        for field, env_id in zip(fields, (config.train, config.deploy)):
            _check_id(field, env_id)
        self.features = _FeatureMap(config.features)
        self.value = _Truth("value", config.value)
        self.catastrophe = _Truth("catastrophe", config.catastrophe)
        self.rater_fn = resolve("rater", config.rater) if config.rater else None
        self._policies: dict[str, Callable[..., Any]] = {}
        for name, path in (("behaviour", config.behaviour), ("oracle", config.oracle)):
            if path is not None and path != "random":
                self._policies[name] = resolve(name, path)
        self.label = config.name or (config.train if config.train == config.deploy
                                     else f"{config.train} -> {config.deploy}")
        self.info = self._describe()

    # --- construction ---------------------------------------------------------------

    def make_raw(self, split: str) -> gymnasium.Env:
        cfg = self.config
        kwargs = {**cfg.kwargs, **(cfg.train_kwargs if split == "train" else cfg.deploy_kwargs)}
        if cfg.split_kwarg:
            kwargs["split"] = split
        env_id = cfg.train if split == "train" else cfg.deploy
        try:
            return gymnasium.make(env_id, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- the environment's own constructor
            field = "kwargs" if kwargs else ("id" if cfg.split_kwarg else split)
            raise GymConfigError(field, f"gymnasium.make({env_id!r}, **{kwargs}) failed:"
                                        f" {type(exc).__name__}: {exc}") from None

    def _describe(self) -> EnvInfo:
        cfg = self.config
        envs = {split: self.make_raw(split) for split in ("train", "deploy")}
        space = envs["train"].action_space
        if isinstance(space, spaces.Discrete):
            if space.start != 0:
                raise GymConfigError("id", f"a Discrete action space must start at 0, got start={space.start}")
            n = int(space.n)
            names = tuple(cfg.action_names) if cfg.action_names is not None else tuple(f"a{i}" for i in range(n))
            if len(names) != n:
                raise GymConfigError("action_names", f"needs {n} names (one per action), got {len(names)}")
            action = dict(action_kind="discrete", num_actions=n, action_names=names, action_low=None,
                          action_high=None)
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
                raise GymConfigError("id", "a Box action space needs finite bounds")
            action = dict(action_kind="continuous", num_actions=None, action_names=None,
                          action_low=space.low.astype(np.float32), action_high=space.high.astype(np.float32))
        else:
            raise GymConfigError("id", f"unsupported action space {space}: priorguard plans Discrete(n) or a"
                                       " one-dimensional Box")
        for split, env in envs.items():  # the feature map on a reset and on one step of each split
            obs, info = env.reset(seed=0)
            self.features(obs, info, env.unwrapped)
            act = 0 if action["num_actions"] is not None else (space.low + space.high) / 2
            obs, reward, _, _, info = env.step(act)
            self.features(obs, info, env.unwrapped)
            if self.value.declared:
                self.value(obs, info, env.unwrapped, 0.0)
            if self.catastrophe.declared:
                self.catastrophe(obs, info, env.unwrapped, False)
        names = self.features.names
        if len(set(names)) != len(names):
            raise GymConfigError("features", f"feature names must be distinct, got {list(names)}")
        unknown = sorted(set(cfg.ranges) - set(names))
        if unknown:
            raise GymConfigError("ranges", f"no feature {unknown[0]!r}; the features are {list(names)}")
        horizon = cfg.horizon or envs["train"].spec.max_episode_steps or getattr(envs["train"].unwrapped,
                                                                                  "max_steps", None)
        if not horizon:
            raise GymConfigError("horizon", f"{cfg.train} has no max_episode_steps: declare env.horizon")
        for env in envs.values():
            env.close()
        version = re.search(r"-v(\d+)$", cfg.train)
        return EnvInfo(env_id=self.label, feature_names=names, feature_ranges=self._ranges(envs["train"], names),
                       horizon=int(horizon), version=int(version.group(1)) if version else 0,
                       description=f"gymnasium {self.label}", has_catastrophes=self.catastrophe.declared,
                       **action)

    def _ranges(self, env: gymnasium.Env, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
        """Declared ranges; else the Box observation's finite bounds (column names only); else (nan, nan):
        measured from the training data by `measured_ranges`."""
        out = {}
        box = env.observation_space if isinstance(self.config.features, tuple) else None
        for i, name in enumerate(names):
            if name in self.config.ranges:
                lo, hi = self.config.ranges[name]
            elif isinstance(box, spaces.Box) and np.isfinite(box.low.reshape(-1)[i]) and \
                    np.isfinite(box.high.reshape(-1)[i]):
                lo, hi = float(box.low.reshape(-1)[i]), float(box.high.reshape(-1)[i])
            else:
                lo = hi = float("nan")
            out[name] = (float(lo), float(hi))
        return out

    @property
    def measured(self) -> list[str]:
        """Features whose range is measured from the training data."""
        return [n for n, (lo, _) in self.info.feature_ranges.items() if math.isnan(lo)]

    def measured_ranges(self, states: np.ndarray) -> dict[str, tuple[float, float]]:
        """Every feature's range: declared, or measured from states ``[N, F]`` (their min and max; a
        constant column gets +-0.5). The source itself is left as it is (runs of other seeds share it)."""
        ranges = dict(self.info.feature_ranges)
        for i, name in enumerate(self.info.feature_names):
            if name in self.measured:
                lo, hi = float(np.min(states[:, i])), float(np.max(states[:, i]))
                ranges[name] = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo, hi)
        return ranges

    # --- EnvSource -------------------------------------------------------------------

    def make(self, split: str) -> StepEnv:
        return GymStepEnv(self, split)

    def policy_names(self) -> list[str]:
        names = {"random", "behaviour"} | set(self._policies)
        return sorted(names)

    def policy(self, name: str) -> SourcePolicy:
        if name == "random" or (name == "behaviour" and "behaviour" not in self._policies):
            return self._random
        fn = self._policies[name]
        if _takes_env(fn):
            return lambda obs, rng, env: self.as_action(fn(obs, rng, env.raw))
        return lambda obs, rng, env: self.as_action(fn(obs, rng))

    def _random(self, obs: np.ndarray, rng: np.random.Generator, env: Any) -> Any:
        info = self.info
        if info.num_actions is not None:
            return int(rng.integers(info.num_actions))
        return rng.uniform(info.action_low, info.action_high).astype(np.float32)

    def as_action(self, action: Any) -> Any:
        if self.info.num_actions is not None:
            return int(np.asarray(action).reshape(()))
        return np.asarray(action, np.float32).reshape(self.info.action_low.shape)

    @property
    def unavailable(self) -> dict[str, str]:
        out = {"model": f"{self.label} has no model of its dynamics (a gymnasium environment)"}
        if "oracle" not in self._policies:
            out["oracle"] = f"{self.label} declares no oracle policy (env.oracle)"
        if not self.catastrophe.declared:
            out["candidate_catastrophes"] = f"{self.label} declares no catastrophe (env.catastrophe)"
        if not self.value.declared:
            out["true_value"] = f"{self.label} declares no true value (env.value): values are the rater's labels"
        return out

    def fingerprint(self) -> int | str:
        import importlib.metadata as md

        return f"gymnasium {md.version('gymnasium')} {dataclasses.asdict(self.config)}"
