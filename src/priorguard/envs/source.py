"""What a run needs from an environment: `EnvSource`, and `SuiteSource` for the built-in suite.

A run collects train-split episodes, steps deploy- and train-split episodes in lockstep with
an actor, and scores them. It reads the environment through two small interfaces:

- `EnvSource`: the static facts (`EnvInfo`: feature names and ranges, actions, horizon), the
  episodes (`EnvSource.make`), the named policies (``behaviour``, ``oracle``, ``random``...),
  and what it can offer beyond transitions: a JAX model of the true dynamics (I's true values,
  random states for audits) and, per candidate action, whether it would have been
  catastrophic. What a source cannot offer is listed in `EnvSource.unavailable` with the
  reason, and the run reports the metrics that need it as n/a with that reason.
- `StepEnv`: one episode's environment, returning features (a float vector), the rater's
  label, the true value, the catastrophe flag and the outcome flags at every step.

`SuiteSource` serves priorguard's own environments (everything is available);
:class:`priorguard.envs.gym_source.GymSource` serves any gymnasium environment.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np

from priorguard.envs.base import EnvInfo

if TYPE_CHECKING:
    from priorguard.envs.model import EnvModel

__all__ = ["EnvSource", "SourcePolicy", "Step", "StepEnv", "SuiteSource", "as_source"]

SourcePolicy = Callable[[np.ndarray, np.random.Generator, "StepEnv"], Any]
"""``policy(features [F], rng, env) -> action``: a named policy of a source; ``env`` is the
episode's `StepEnv` (its ``raw`` environment lets an oracle read the true state)."""


@dataclasses.dataclass(frozen=True)
class Step:
    """What one step of an episode reports.

    Attributes:
        obs: the features of the new state ``[F]``.
        rater: the rater's label of the new state (the reward the learner sees).
        value: its true terminal value (the rater's label where no truth is declared).
        catastrophe: whether the new state is catastrophic.
        flags: the outcome flags of the source's `EnvInfo` (``{key: bool}``).
        terminated: the episode ended in the new state (not the time limit).
        truncated: the time limit ended the episode.
    """

    obs: np.ndarray
    rater: float
    value: float
    catastrophe: bool
    flags: Mapping[str, bool]
    terminated: bool
    truncated: bool


class StepEnv(abc.ABC):
    """One episode's environment, in features.

    Attributes:
        horizon: the most steps an episode takes.
        raw: the underlying gymnasium environment (unwrapped), for policies that read it.
    """

    horizon: int
    raw: Any

    @abc.abstractmethod
    def reset(self, seed: int) -> np.ndarray:
        """Starts an episode (same seed, same episode); returns its first features ``[F]``."""

    @abc.abstractmethod
    def step(self, action: Any) -> Step:
        """Takes one step."""

    def catastrophic(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Whether each candidate action ``[K, ...]`` would have led into a catastrophe from here.

        ``None`` where the source cannot tell (see ``EnvSource.unavailable["candidate_catastrophes"]``).
        """
        return None

    def hidden_state(self) -> np.ndarray | None:
        """The true state, for a source with a JAX model (``None`` otherwise)."""
        return None


class EnvSource(abc.ABC):
    """An environment as a run reads it: facts, episodes, policies and optional ground truth.

    Attributes:
        info: the static facts (feature names and ranges, actions, horizon, outcome flags).
        label: how runs name the environment (``metrics["env"]``, the report).
    """

    info: EnvInfo
    label: str

    @abc.abstractmethod
    def make(self, split: str) -> StepEnv:
        """A fresh episode environment of a split."""

    @abc.abstractmethod
    def policy_names(self) -> list[str]:
        """The names `policy` accepts, sorted."""

    @abc.abstractmethod
    def policy(self, name: str) -> SourcePolicy:
        """A named policy (raises KeyError for a name not in `policy_names`)."""

    def model(self, split: str) -> EnvModel | None:
        """The pure JAX model of a split's true dynamics, or ``None``."""
        return None

    @property
    def unavailable(self) -> dict[str, str]:
        """What this source cannot offer -> why (the run reports the metrics needing it as n/a).

        Keys: ``"oracle"`` (a near-optimal policy: oracle return and regret), ``"model"`` (a JAX
        model: I's true values, random states for audits), ``"candidate_catastrophes"``
        (whether an action not taken would have been catastrophic), ``"true_value"`` (a value
        other than the rater's label).
        """
        return {}

    def measured_ranges(self, states: np.ndarray) -> dict[str, tuple[float, float]]:
        """Every feature's ``(low, high)``, measuring the undeclared ones from training states ``[N, F]``."""
        return dict(self.info.feature_ranges)

    def fingerprint(self) -> int | str:
        """What identifies this environment's behaviour in a run's id: the id's version number
        (the suite's run ids are as they were); sources that can change otherwise say more."""
        return self.info.version


class SuiteStepEnv(StepEnv):
    """An episode of a suite environment (`PriorguardEnv`): its dynamics are the truth."""

    def __init__(self, env_id: str, split: str):
        self.raw = gymnasium.make(env_id, split=split).unwrapped
        self.horizon = self.raw.horizon
        self._flags = tuple(flag.key for flag in self.raw.dynamics.outcome_flags)

    def reset(self, seed: int) -> np.ndarray:
        return self.raw.reset(seed=seed)[0]

    def step(self, action: Any) -> Step:
        obs, _, terminated, truncated, info = self.raw.step(action)
        return Step(obs, info["rater_value"], info["true_terminal_value"], info["catastrophe"],
                    {key: info[key] for key in self._flags}, bool(terminated), bool(truncated))

    def catastrophic(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        dyn, state = self.raw.dynamics, self.raw.state
        out = np.zeros(len(candidates), bool)
        for k, cand in enumerate(candidates):
            noise = (rng.random(dyn.step_noise_size, dtype=np.float32) if dyn.step_noise_size
                     else np.zeros((0,), np.float32))
            cand = int(cand) if dyn.num_actions is not None else np.asarray(cand, np.float32)
            out[k] = bool(dyn.catastrophe(np, dyn.transition(np, state, cand, noise)))
        return out

    def hidden_state(self) -> np.ndarray:
        return self.raw.state


class SuiteSource(EnvSource):
    """One of priorguard's own environments, by id (see :func:`priorguard.envs.list_envs`)."""

    def __init__(self, env_id: str):
        from priorguard.envs.registry import env_info

        self.env_id = env_id
        self.info = env_info(env_id)
        self.label = env_id

    def make(self, split: str) -> StepEnv:
        return SuiteStepEnv(self.env_id, split)

    @functools.cached_property
    def _policies(self) -> dict[str, Any]:
        from priorguard.envs.registry import reference_policies

        return reference_policies(self.env_id)

    def policy_names(self) -> list[str]:
        return sorted(self._policies)

    def policy(self, name: str) -> SourcePolicy:
        policy = self._policies[name]
        return lambda obs, rng, env: policy(obs, rng)

    def model(self, split: str) -> EnvModel:
        from priorguard.envs.registry import jax_model

        return jax_model(self.env_id, split)


@functools.lru_cache(maxsize=64)
def _suite_source(env_id: str) -> SuiteSource:
    return SuiteSource(env_id)


def as_source(env: EnvSource | str) -> EnvSource:
    """``env`` itself, or the `SuiteSource` of a suite id (one per id, reused)."""
    return _suite_source(env) if isinstance(env, str) else env
