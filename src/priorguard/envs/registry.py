"""The registry: ids, gymnasium registration, and lookups by id.

The suite's environments are registered on import; a user adds their own with
:func:`register_env` from their module (a `Dynamics` subclass, its gymnasium entry point
and its reference policies), and specs can then name its id.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gymnasium

from priorguard.envs.assistant import AssistantDynamics, assistant_policies
from priorguard.envs.base import Dynamics, EnvInfo, check_split
from priorguard.envs.coin_shift import CoinShiftDynamics, coin_shift_policies
from priorguard.envs.lava_shift import LavaShiftDynamics, lava_shift_policies
from priorguard.envs.policies import Policy
from priorguard.envs.shifted_pendulum import ShiftedPendulumDynamics, shifted_pendulum_policies
from priorguard.envs.vault import VaultDynamics, vault_policies

if TYPE_CHECKING:
    from priorguard.envs.model import EnvModel

__all__ = ["env_info", "jax_model", "list_envs", "reference_policies", "register_env", "register_envs"]


@dataclasses.dataclass(frozen=True)
class _Entry:
    dynamics: type[Dynamics]
    entry_point: str
    policies: Callable[[Any], dict[str, Policy]]


_ENTRIES: dict[str, _Entry] = dict(
    {
        CoinShiftDynamics.env_id: _Entry(
            CoinShiftDynamics, "priorguard.envs.coin_shift:CoinShiftEnv", coin_shift_policies
        ),
        VaultDynamics.env_id: _Entry(VaultDynamics, "priorguard.envs.vault:VaultEnv", vault_policies),
        AssistantDynamics.env_id: _Entry(
            AssistantDynamics, "priorguard.envs.assistant:AssistantEnv", assistant_policies
        ),
        LavaShiftDynamics.env_id: _Entry(
            LavaShiftDynamics, "priorguard.envs.lava_shift:LavaShiftEnv", lava_shift_policies
        ),
        ShiftedPendulumDynamics.env_id: _Entry(
            ShiftedPendulumDynamics,
            "priorguard.envs.shifted_pendulum:ShiftedPendulumEnv",
            shifted_pendulum_policies,
        ),
    }
)


def register_envs() -> None:
    """Register every priorguard id with gymnasium (idempotent; run on import).

    The environments truncate at their own horizon, so no ``TimeLimit`` is
    registered (``max_episode_steps=None``); see `env_info` for the horizon.
    """
    from priorguard.metrics import register_outcomes

    for env_id, entry in _ENTRIES.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry.entry_point)
        register_outcomes(entry.dynamics.outcome_flags)  # the metrics of the env's outcome flags


def register_env(dynamics: type[Dynamics], entry_point: str, policies: Callable[[Any], dict[str, Policy]]) -> None:
    """Adds an environment to the registry, from any module: specs can then name ``dynamics.env_id``.

    Args:
        dynamics: the environment's `Dynamics` subclass (its ``env_id``, features, ground truth).
        entry_point: ``"module:Class"`` of its gymnasium environment (a `PriorguardEnv` subclass).
        policies: ``dynamics -> {name: policy}``, its reference policies; ``"behaviour"`` and
            ``"oracle"`` are the ones a run uses by default.

    Raises:
        ValueError: the id is taken by another environment.
    """
    env_id = dynamics.env_id
    if env_id in _ENTRIES and _ENTRIES[env_id].dynamics is not dynamics:
        raise ValueError(f"environment id {env_id!r} is already registered (by {_ENTRIES[env_id].dynamics.__name__})")
    _ENTRIES[env_id] = _Entry(dynamics, entry_point, policies)
    register_envs()


def list_envs() -> list[str]:
    """Return the ids of the suite, in the order of the docs.

    Returns:
        e.g. ``["priorguard/CoinShift-v1", "priorguard/Vault-v1", ...]``.

    Example:
        >>> from priorguard.envs import list_envs
        >>> list_envs()[0]
        'priorguard/CoinShift-v1'
    """
    return list(_ENTRIES)


def _lookup(env_id: object) -> _Entry:
    if isinstance(env_id, str) and env_id in _ENTRIES:
        return _ENTRIES[env_id]
    known = list(_ENTRIES)
    if not isinstance(env_id, str):
        raise ValueError(
            f"env_id must be a str, one of {known}; got {env_id!r} of type {type(env_id).__name__}"
        )
    query = env_id.lower()

    def similarity(candidate: str) -> float:
        short = candidate.split("/")[-1].rsplit("-v", 1)[0].lower()
        return max(
            difflib.SequenceMatcher(None, query, candidate.lower()).ratio(),
            difflib.SequenceMatcher(None, query, short).ratio(),
        )

    closest = max(known, key=similarity)
    raise ValueError(f"unknown env_id {env_id!r}; did you mean {closest!r}? Known ids: {known}")


def _dynamics(env_id: str, split: str, env_kwargs: dict[str, Any]) -> Dynamics:
    entry = _lookup(env_id)
    check_split(split)
    try:
        return entry.dynamics(split=split, **env_kwargs)
    except TypeError as error:  # an unknown keyword argument
        fields = [f.name for f in dataclasses.fields(entry.dynamics) if f.name != "split"]
        raise ValueError(
            f"unknown argument for {env_id}: {sorted(env_kwargs)}; allowed: {fields}"
        ) from error


def env_info(env_id: str, **env_kwargs: Any) -> EnvInfo:
    """Describe an environment without building or stepping it.

    Args:
        env_id: A registered id (see `list_envs`).
        **env_kwargs: Size arguments, as for ``gymnasium.make`` (e.g. ``length=12``
            for CoinShift); defaults otherwise.

    Returns:
        Its `EnvInfo`.

    Raises:
        ValueError: For an unknown id (the message names the closest known id)
            or a bad size argument.

    Example:
        >>> from priorguard.envs import env_info
        >>> info = env_info("priorguard/CoinShift-v1")
        >>> info.feature_names, info.num_actions, info.horizon
        (('agent_x', 'coin_x', 'coin_dx', 'at_end'), 3, 30)
    """
    return _dynamics(env_id, "train", env_kwargs).info()


def jax_model(env_id: str, split: str, **env_kwargs: Any) -> EnvModel:
    """Return the pure JAX model of an environment and split.

    Args:
        env_id: A registered id (see `list_envs`).
        split: ``"train"`` or ``"deploy"``.
        **env_kwargs: Size arguments, as for ``gymnasium.make``.

    Returns:
        An `EnvModel` (equinox module; jit-able, vmappable).

    Raises:
        ValueError: For an unknown id, split or size argument.

    Example:
        >>> import jax
        >>> from priorguard.envs import jax_model
        >>> model = jax_model("priorguard/LavaShift-v0", "deploy")
        >>> states = jax.vmap(model.reset)(jax.random.split(jax.random.key(0), 4))
        >>> states.shape
        (4, 3)
    """
    from priorguard.envs.model import EnvModel  # JAX: imported on first use

    return EnvModel(_dynamics(env_id, split, env_kwargs))


def reference_policies(env_id: str, **env_kwargs: Any) -> dict[str, Policy]:
    """Return the reference policies of an environment.

    Keys: ``"oracle"`` (uses the true model; near-optimal on deploy),
    ``"proxy"`` (the misgeneralising baseline: optimal for the train split,
    documented per environment), ``"random"``, and ``"behaviour"`` (for
    collecting train data). Each is ``policy(obs, rng) -> action`` with ``obs``
    a numpy observation ``[F]`` and ``rng`` a ``numpy.random.Generator``. They
    read only the observation, so the same policy serves both splits.

    Args:
        env_id: A registered id (see `list_envs`).
        **env_kwargs: Size arguments, as for ``gymnasium.make``.

    Returns:
        ``{name: policy}``.

    Raises:
        ValueError: For an unknown id or size argument.

    Example:
        >>> import numpy as np
        >>> from priorguard.envs import reference_policies
        >>> policies = reference_policies("priorguard/CoinShift-v1")
        >>> policies["oracle"](np.array([2.0, 5.0, 3.0, 0.0]), np.random.default_rng(0))
        2
    """
    dynamics = _dynamics(env_id, "train", env_kwargs)
    return _lookup(env_id).policies(dynamics)
