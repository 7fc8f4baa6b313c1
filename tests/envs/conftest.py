"""Shared helpers of the environment tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import numpy as np
import pytest

import priorguard.envs as pe


@dataclass(frozen=True)
class EpisodeStats:
    """Per-episode true returns and catastrophe flags of one policy."""

    returns: np.ndarray  # [E]
    catastrophes: np.ndarray  # [E] bool

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def catastrophe_rate(self) -> float:
        return float(self.catastrophes.mean())


def run_episodes(env_id: str, split: str, policy_name: str, *, episodes: int, seed: int) -> EpisodeStats:
    """Run a reference policy through gymnasium and score it with the ground truth in ``info``."""
    env = gymnasium.make(env_id, split=split)
    policy = pe.reference_policies(env_id)[policy_name]
    rng = np.random.default_rng(seed)
    returns, catastrophes = [], []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        total, catastrophe = 0.0, False
        while True:
            obs, _, terminated, truncated, info = env.step(policy(obs, rng))
            total += info["true_terminal_value"]
            catastrophe |= info["catastrophe"]
            if terminated or truncated:
                break
        returns.append(total)
        catastrophes.append(catastrophe)
        obs, _ = env.reset()
    env.close()
    return EpisodeStats(np.array(returns), np.array(catastrophes))


@pytest.fixture
def episodes() -> Callable[..., EpisodeStats]:
    """`run_episodes` as a fixture."""
    return run_episodes
