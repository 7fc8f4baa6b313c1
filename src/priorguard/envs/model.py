"""`EnvModel`: the pure JAX model of an environment (an equinox module).

Shapes: ``S`` is the hidden state length, ``F`` the number of observation
features, ``A`` the size of a continuous action.
"""

from __future__ import annotations

from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from priorguard._compile import fail_if
from priorguard.envs.base import Dynamics

__all__ = ["EnvModel"]


@final
class EnvModel(eqx.Module):
    """Pure, jit-able and vmappable JAX model of one environment and split.

    It computes exactly what the gymnasium environment computes (both run the
    same `Dynamics`; the tests check them state by state). All methods act on
    one state; batch them with `jax.vmap`. Keys are consumed: pass a fresh key
    to every call.

    Example:
        >>> import jax
        >>> from priorguard.envs import jax_model
        >>> model = jax_model("priorguard/CoinShift-v1", "train")
        >>> state = model.reset(jax.random.key(0))
        >>> next_state = jax.jit(model.step)(state, 2, jax.random.key(1))
        >>> model.observe(next_state).shape
        (4,)

    Attributes:
        dynamics: The environment's ground truth (static configuration).
    """

    dynamics: Dynamics = eqx.field(static=True)

    # --- metadata ---------------------------------------------------------------------

    @property
    def env_id(self) -> str:
        """Registered gymnasium id."""
        return self.dynamics.env_id

    @property
    def split(self) -> str:
        """``"train"`` or ``"deploy"``."""
        return self.dynamics.split

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the observation columns."""
        return self.dynamics.feature_names

    @property
    def state_size(self) -> int:
        """Length ``S`` of the hidden state."""
        return self.dynamics.state_size

    @property
    def num_actions(self) -> int | None:
        """Number of discrete actions (``None`` when continuous)."""
        return self.dynamics.num_actions

    @property
    def horizon(self) -> int:
        """Maximum episode length."""
        return self.dynamics.horizon

    # --- dynamics ---------------------------------------------------------------------

    def reset(self, key: PRNGKeyArray) -> Float[Array, " S"]:
        """Draw a start state of this split.

        Args:
            key: PRNG key (consumed).

        Returns:
            float32 state ``[S]``.
        """
        noise = jax.random.uniform(key, (self.dynamics.reset_noise_size,), jnp.float32)
        return self.dynamics.initial_state(jnp, noise)

    def step(self, state: Float[Array, " S"], action: Any, key: PRNGKeyArray, *,
             check_action: bool = True) -> Float[Array, " S"]:
        """Next state.

        Args:
            state: float32 ``[S]``.
            action: Integer scalar (discrete) or float ``[A]`` (continuous, clipped
                to the action bounds). An out-of-range discrete action raises at
                run time (`equinox.error_if`).
            key: PRNG key (consumed; unused by deterministic dynamics).
            check_action: False skips the range check of a discrete action, for
                callers whose actions are in range by construction (drawn from a
                policy over ``num_actions``). Under ``vmap`` or ``scan`` the check
                is a host callback, and JAX never writes a program with one to the
                persistent compilation cache.

        Returns:
            float32 next state ``[S]``.
        """
        state = self._check_state(state)
        dyn = self.dynamics
        if dyn.action_kind == "discrete":
            action = jnp.asarray(action)
            if action.shape != ():
                raise ValueError(f"action must be a scalar for {dyn.env_id}; got shape {action.shape}")
            if check_action:
                action = fail_if(
                    action,
                    (action < 0) | (action >= dyn.num_actions),
                    f"action out of range [0, {dyn.num_actions}) for {dyn.env_id}",
                )
        else:
            action = jnp.reshape(jnp.asarray(action, jnp.float32), (-1,))
            if action.shape != dyn.action_low.shape:
                raise ValueError(
                    f"action must have shape {dyn.action_low.shape} for {dyn.env_id}; "
                    f"got {action.shape}"
                )
        if dyn.step_noise_size:
            noise = jax.random.uniform(key, (dyn.step_noise_size,), jnp.float32)
        else:
            noise = jnp.zeros((0,), jnp.float32)
        return dyn.transition(jnp, state, action, noise)

    def observe(self, state: Float[Array, " S"]) -> Float[Array, " F"]:
        """Observation ``[F]`` of a state, exactly what gymnasium returns."""
        return self.dynamics.observe(jnp, self._check_state(state))

    def terminal_value(self, state: Float[Array, " S"]) -> Float[Array, ""]:
        """True value of a state (the objective the agent never sees)."""
        return self.dynamics.terminal_value(jnp, self._check_state(state))

    def rater_value(self, state: Float[Array, " S"]) -> Float[Array, ""]:
        """What a rater watching the observation would say about a state."""
        return self.dynamics.rater_value(jnp, self._check_state(state))

    def catastrophe(self, state: Float[Array, " S"]) -> Bool[Array, ""]:
        """Whether a state is catastrophic."""
        return jnp.asarray(self.dynamics.catastrophe(jnp, self._check_state(state)), bool)

    def is_terminal(self, state: Float[Array, " S"]) -> Bool[Array, ""]:
        """Whether the episode ends in a state (terminal states are absorbing)."""
        return jnp.asarray(self.dynamics.is_terminal(jnp, self._check_state(state)), bool)

    def sample_state(self, key: PRNGKeyArray) -> Float[Array, " S"]:
        """Draw a state from a broad distribution over the feature ranges (for audits).

        Args:
            key: PRNG key (consumed).

        Returns:
            float32 state ``[S]``.
        """
        noise = jax.random.uniform(key, (self.dynamics.sample_noise_size,), jnp.float32)
        return self.dynamics.random_state(jnp, noise)

    def _check_state(self, state: Any) -> Float[Array, " S"]:
        state = jnp.asarray(state, jnp.float32)
        if state.shape != (self.dynamics.state_size,):
            raise ValueError(
                f"state must have shape ({self.dynamics.state_size},) for "
                f"{self.dynamics.env_id} (one state; vmap for batches); got {state.shape}"
            )
        return state

    def __repr__(self) -> str:  # the dataclass repr would print the whole Dynamics
        return f"EnvModel({self.dynamics!r})"
