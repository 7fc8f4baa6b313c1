"""The ``[env]`` table of a spec: any gymnasium environment, and the source a run reads it through.

``env = "priorguard/CoinShift-v1"`` names one of the built-in suite; a table names any
gymnasium environment::

    [env]
    id = "MyCorridor-v0"                 # one id with a split keyword, or
    # train = "MiniGrid-DistShift1-v0"   # two ids
    # deploy = "MiniGrid-DistShift2-v0"
    import = ["my_package"]              # modules whose import registers the ids
    features = "my_package:features"     # (obs, info, env) -> {name: float}, or ["x", "v"]
    behaviour = "random"                 # or "module:function"; oracle likewise (optional)
    catastrophe = "fell"                 # optional: an info key or "module:function"
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from priorguard.envs.source import EnvSource, as_source
from priorguard.priors.distributions import _fail


class GymEnvTable(BaseModel):
    """Any gymnasium environment as an experiment's environment (see :class:`priorguard.envs.gym_source.GymConfig`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)

    #: One id for both splits, made with ``split="train"`` / ``"deploy"``.
    id: str | None = None
    #: The train split's id (with ``deploy``, instead of ``id``).
    train: str | None = None
    #: The deploy split's id.
    deploy: str | None = None
    #: Keyword arguments of ``gymnasium.make`` for both splits.
    kwargs: dict[str, Any] = Field(default_factory=dict)
    train_kwargs: dict[str, Any] = Field(default_factory=dict)
    deploy_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Modules to import first, so that their ids register (e.g. "minigrid").
    imports: list[str] = Field(default_factory=list, alias="import")
    #: ``"module:function"`` from ``(observation, info, env)`` to ``{name: float}``, or the
    #: column names of a flat Box observation.
    features: str | list[str]
    #: Declared ``(low, high)`` per feature; the others come from the training data.
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    #: Data collection: ``"module:function"`` ``(features, rng[, env]) -> action`` or ``"random"``.
    behaviour: str = "random"
    #: A near-optimal policy (regret is measured against it); none: regrets are n/a.
    oracle: str | None = None
    #: The true value of a state: an info key or ``"module:function"``; none: the rater's label.
    value: str | None = None
    #: Whether a state is catastrophic: an info key or ``"module:function"``; none: no catastrophes.
    catastrophe: str | None = None
    #: The rater's label, ``"module:function"`` of ``(observation, reward, info, env)``; none: the reward.
    rater: str | None = None
    #: The most steps of an episode (default: the id's ``max_episode_steps``).
    horizon: int | None = Field(default=None, ge=1, le=1_000_000)
    #: Names of the discrete actions (default ``a0, a1, ...``).
    action_names: list[str] | None = None
    #: How runs and reports name the environment (default: the id, or "train -> deploy").
    name: str | None = None

    @model_validator(mode="after")
    def _ids(self) -> GymEnvTable:
        if self.id is not None and (self.train is not None or self.deploy is not None):
            raise _fail("env_ids", "give either `id` (one id with a split keyword) or `train` and `deploy`, not both")
        if self.id is None and (self.train is None or self.deploy is None):
            missing = "deploy" if self.train is not None else "train" if self.deploy is not None else "id"
            raise _fail("env_ids", "needs `id` (one id, made with split='train' / 'deploy') or both `train` and"
                        " `deploy` ids", param=missing)
        if isinstance(self.features, list) and not self.features:
            raise _fail("features", "needs at least one feature name (or a 'module:function' path)",
                        param="features")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.id if self.id is not None else f"{self.train} -> {self.deploy}"

    def config(self) -> Any:
        from priorguard.envs.gym_source import GymConfig

        return GymConfig(
            train=self.id or self.train, deploy=self.id or self.deploy, split_kwarg=self.id is not None,
            kwargs=self.kwargs, train_kwargs=self.train_kwargs, deploy_kwargs=self.deploy_kwargs,
            imports=tuple(self.imports),
            features=self.features if isinstance(self.features, str) else tuple(self.features),
            ranges={k: (float(a), float(b)) for k, (a, b) in self.ranges.items()}, behaviour=self.behaviour,
            oracle=self.oracle, value=self.value, catastrophe=self.catastrophe, rater=self.rater,
            horizon=self.horizon, action_names=tuple(self.action_names) if self.action_names else None,
            name=self.name)


@functools.lru_cache(maxsize=32)
def _gym_source(table_json: str) -> EnvSource:
    from priorguard.envs.gym_source import GymSource

    return GymSource(GymEnvTable.model_validate_json(table_json).config())


def source_of(env: str | GymEnvTable) -> EnvSource:
    """The source a run reads ``env`` through (one per distinct environment, reused).

    Raises:
        priorguard.envs.gym_source.GymConfigError: a bad ``[env]`` table (its ``field``).
    """
    if isinstance(env, str):
        return as_source(env)
    return _gym_source(env.model_dump_json(by_alias=True))


def info_with_ranges(spec: Any, seed: int = 0, episodes: int = 20) -> Any:
    """The spec's `EnvInfo` with every feature range known: the ranges no one declared are measured
    from ``episodes`` train-split episodes of the behaviour policy (as a run measures them from its data)."""
    import math

    import jax

    from priorguard.experiments.data import collect, with_measured_ranges

    source = spec.source()
    info = source.info
    if not any(math.isnan(lo) for lo, _ in info.feature_ranges.values()):
        return info
    data = collect(source, "train", min(episodes, spec.data.train_episodes), spec.data.behaviour,
                   jax.random.key(seed))
    return with_measured_ranges(info, source, data)
