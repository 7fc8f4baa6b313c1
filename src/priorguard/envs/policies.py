"""Policy type and small combinators for the reference policies.

A policy is a plain function ``(obs, rng) -> action`` of one numpy observation
``[F]`` and a ``numpy.random.Generator`` (its only source of randomness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Policy", "epsilon_mix", "random_discrete"]

Policy = Callable[[np.ndarray, np.random.Generator], Any]
"""``policy(obs [F], rng) -> action``."""


def random_discrete(num_actions: int) -> Policy:
    """Uniformly random policy over ``num_actions`` discrete actions.

    Args:
        num_actions: Number of actions.

    Returns:
        The policy.
    """

    def random(obs: np.ndarray, rng: np.random.Generator) -> int:
        return int(rng.integers(num_actions))

    return random


def epsilon_mix(greedy: Policy, explore: Policy, *, epsilon: float) -> Policy:
    """Act with ``explore`` with probability ``epsilon``, else with ``greedy``.

    Args:
        greedy: Policy used with probability ``1 - epsilon``.
        explore: Policy used with probability ``epsilon``.
        epsilon: Exploration probability in ``[0, 1]``.

    Returns:
        The mixed policy.
    """

    def mixed(obs: np.ndarray, rng: np.random.Generator) -> Any:
        return explore(obs, rng) if rng.random() < epsilon else greedy(obs, rng)

    return mixed
