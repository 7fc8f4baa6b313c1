"""Environments with a train split and a shifted deploy split, and a known true objective.

Importing this package registers the suite with gymnasium::

    import gymnasium
    import priorguard.envs

    env = gymnasium.make("priorguard/CoinShift-v1", split="deploy")

Every environment's observation is a flat float32 vector of named features
(``feature_names``, ``feature_ranges``); ground truth is in ``info``
(``true_terminal_value``, ``catastrophe``). Each has a pure JAX model
(`jax_model`) that computes the same thing, reference policies
(`reference_policies`) and a static description (`env_info`).

The suite (see docs/environments.md):

- ``priorguard/CoinShift-v1``: coin at the end (train) or anywhere (deploy).
- ``priorguard/Vault-v1``: a thief and a camera that can be covered (thieves in half the train episodes).
- ``priorguard/Assistant-v0``: requests judged by actions vs by outcomes.
- ``priorguard/LavaShift-v0``: the door in a lava wall moves (deploy).
- ``priorguard/ShiftedPendulum-v0``: Pendulum-v1 with a forbidden arc that
  changes sides (deploy).
"""

from priorguard.envs.assistant import AssistantEnv
from priorguard.envs.base import SPLITS, Dynamics, EnvInfo, OutcomeFlag
from priorguard.envs.coin_shift import CoinShiftEnv
from priorguard.envs.gym_env import PriorguardEnv
from priorguard.envs.lava_shift import LavaShiftEnv
from priorguard.envs.policies import Policy
from priorguard.envs.registry import (
    env_info,
    jax_model,
    list_envs,
    reference_policies,
    register_env,
    register_envs,
)
from priorguard.envs.shifted_pendulum import ShiftedPendulumEnv
from priorguard.envs.vault import VaultEnv

register_envs()


def __getattr__(name: str):  # EnvModel (JAX) on first use: importing the suite stays light
    if name == "EnvModel":
        from priorguard.envs.model import EnvModel

        return EnvModel
    raise AttributeError(f"module 'priorguard.envs' has no attribute {name!r}")

__all__ = [
    "SPLITS",
    "AssistantEnv",
    "CoinShiftEnv",
    "Dynamics",
    "EnvInfo",
    "OutcomeFlag",
    "EnvModel",
    "LavaShiftEnv",
    "Policy",
    "PriorguardEnv",
    "ShiftedPendulumEnv",
    "VaultEnv",
    "env_info",
    "jax_model",
    "list_envs",
    "reference_policies",
    "register_env",
]
