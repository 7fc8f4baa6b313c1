"""Train-split experience: collection with a reference policy, fit sizes, and the targets read off it.

Every random choice flows from the run's key; ``collect`` seeds numpy
generators from it, so the same spec and seed give the same episodes.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from priorguard._compile import shape_bucket
from priorguard.envs.source import EnvSource, as_source


@dataclass
class Transitions:
    """Train-split experience, one row per step.

    Attributes:
        obs: ``[N, F]`` observation before the action.
        action: ``[N]`` (discrete) or ``[N, Da]``.
        next_obs: ``[N, F]``.
        rater: ``[N]`` the rater's label of ``next_obs``.
        episode: ``[N]`` episode index.
        terminated: ``[N]`` bool, the episode ended in ``next_obs`` (a terminal
            state; not the time limit).
    """

    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray
    rater: np.ndarray
    episode: np.ndarray
    terminated: np.ndarray

    def subset(self, mask: np.ndarray) -> Transitions:
        return Transitions(self.obs[mask], self.action[mask], self.next_obs[mask], self.rater[mask],
                           self.episode[mask], self.terminated[mask])

    def first_visits(self) -> Transitions:
        """Each episode's first step from each distinct observation, in the original order."""
        rows = np.concatenate([self.episode.reshape(-1, 1).astype(np.float64),
                               self.obs.reshape(len(self.episode), -1).astype(np.float64)], axis=1)
        _, first = np.unique(rows, axis=0, return_index=True)
        return self.subset(np.sort(first))



def seed_ints(key: Any, n: int) -> list[int]:
    """``n`` non-negative int seeds drawn with ``key`` (for numpy generators and env resets)."""
    # to the host in one piece: iterating a device array runs one indexing program per element
    return np.asarray(jax.random.randint(key, (n,), 0, 2**31 - 1)).tolist()


def collect(source: EnvSource | str, split: str, episodes: int, policy: str, key: Any) -> Transitions:
    """Runs ``episodes`` episodes of one of the source's named policies on a split."""
    source = as_source(source)
    act = source.policy(policy)
    seeds = seed_ints(key, episodes + 1)
    rng = np.random.default_rng(seeds[-1])
    env = source.make(split)
    names = ("obs", "action", "next_obs", "rater", "episode", "terminated")
    rows: dict[str, list[Any]] = {k: [] for k in names}
    for ep in range(episodes):
        obs = env.reset(seeds[ep])
        done = False
        while not done:
            action = act(obs, rng, env)
            step = env.step(action)
            rows["obs"].append(obs)
            rows["action"].append(action)
            rows["next_obs"].append(step.obs)
            rows["rater"].append(step.rater)
            rows["episode"].append(ep)
            rows["terminated"].append(step.terminated)
            obs, done = step.obs, step.terminated or step.truncated
    return Transitions(*(np.asarray(rows[k]) for k in names))


def with_measured_ranges(info: Any, source: EnvSource, data: Transitions) -> Any:
    """``info`` with every feature range known: the ones no one declared measured from ``data``'s states."""
    ranges = source.measured_ranges(np.concatenate([data.obs, data.next_obs]).astype(np.float64))
    return info if ranges == info.feature_ranges else dataclasses.replace(info, feature_ranges=ranges)


def fit_size(n: int, cap: int) -> int:
    """Points a model is fitted on: ``min(n, cap)`` rounded down to a shape bucket.

    Buckets are multiples of ``2^(floor(log2 m) - 3)`` (eight per octave, so at
    most 1/8 of the points are dropped; sizes below 64 are kept as they are).
    Seeds of one experiment then fit models of the same shapes and share the
    compiled programs (in a sweep worker, and through the persistent cache).
    """
    return shape_bucket(min(n, cap), direction="down")


def subsample(n: int, cap: int, key: Any) -> np.ndarray:
    """Sorted row indices of a random subset of ``fit_size(n, cap)`` of ``n`` rows (all rows when that is n)."""
    size = fit_size(n, cap)
    if size == n:
        return np.arange(n)
    return np.sort(np.asarray(_choose(key, n, size)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _choose(key: Any, n: int, size: int) -> Any:
    return jax.random.choice(key, n, (size,), replace=False)


def encode_actions(actions: np.ndarray, num_actions: int | None) -> np.ndarray:
    """W's action columns: one-hot ``[N, A]`` for discrete actions, else ``[N, Da]``."""
    if num_actions is not None:
        return np.eye(num_actions)[actions.astype(int)]
    return actions.reshape(len(actions), -1)



def termination_data(data: Transitions) -> tuple[np.ndarray, np.ndarray]:
    """D's training set: every state the agent saw, labelled 1 where its episode ended there.

    The states are each episode's first observation (never terminal: the agent
    acted in it) and every ``next_obs``.

    Returns:
        ``(states [M, F], ended [M])`` with ``ended`` in {0.0, 1.0}.
    """
    first = np.ones(len(data.episode), bool)
    first[1:] = data.episode[1:] != data.episode[:-1]
    states = np.concatenate([data.obs[first], data.next_obs])
    ended = np.concatenate([np.zeros(int(first.sum())), data.terminated.astype(np.float64)])
    return states, ended



def data_returns(data: Transitions, *, horizon: int, discount: float) -> tuple[np.ndarray, np.ndarray]:
    """I's targets from the logged episodes: the discounted rater's labels that followed each state.

    For the state reached by step t of an episode, ``sum_{k < horizon} discount^k r_{t+1+k}``
    over the steps the episode went on for (none after a terminal state; a time limit
    just cuts the sum short). The expectation is under the behaviour policy that
    collected the data, not under A, and nothing passes through W or T.

    Args:
        data: train transitions, each episode's rows in time order.
        horizon: steps summed.
        discount: per-step discount.

    Returns:
        ``(states [N, F], targets [N])``: every visited state (``next_obs``) and its target.
    """
    n = len(data.episode)
    rater, episode = np.asarray(data.rater, np.float64), np.asarray(data.episode)
    terminated = np.asarray(data.terminated, bool)
    rows = np.arange(n)
    total, weight = np.zeros(n), 1.0
    going = ~terminated  # the episode went on after row j's state
    for k in range(horizon):
        src = np.minimum(rows + 1 + k, n - 1)
        going = going & (rows + 1 + k < n) & (episode[src] == episode)
        total += np.where(going, weight * rater[src], 0.0)
        going = going & ~terminated[src]
        weight *= discount
    return np.asarray(data.next_obs, np.float64), total



def in_training_range(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Rows of ``x [N, D]`` inside the per-column ``[min, max]`` of ``train [M, D]``: ``[N]`` bool.

    A deliberately simple notion of support (a bounding box): what a learned T
    has seen values for, column by column.
    """
    lo, hi = np.min(train, axis=0), np.max(train, axis=0)
    return np.all((x >= lo) & (x <= hi), axis=1)

