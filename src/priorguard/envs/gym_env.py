"""`PriorguardEnv`: the gymnasium side of an environment, stepping its `Dynamics` with Python scalars."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from priorguard.envs.base import SCALAR, Dynamics, check_render_mode

__all__ = ["PriorguardEnv"]


class PriorguardEnv(gymnasium.Env):
    """Base class of the suite's gymnasium environments (abstract: use a subclass).

    Steps its `Dynamics` with the `SCALAR` backend (Python floats), the same
    code the JAX model runs.

    The observation is a flat float32 Box whose columns are the named features
    `feature_names`, bounded by `feature_ranges`. The reward of a step is the
    rater's value of the new state (the label a human watching the observation
    would give); ground truth is in ``info``:

    - ``info["true_terminal_value"]``: true value of the new state;
    - ``info["catastrophe"]``: whether the new state is catastrophic;
    - ``info["rater_value"]``: the same number as the reward;
    - one bool per outcome flag the dynamics declare (``outcome_flags``), e.g. vault's
      ``info["tampered"]``: whether the rater's view of the new state has been tampered with.

    The environment truncates after `horizon` steps itself (no ``TimeLimit``
    wrapper is registered), so the limit follows the size arguments.

    Attributes:
        feature_names: Observation column names (class attribute).
        feature_ranges: ``{name: (low, high)}`` (class attribute for the default
            sizes; an instance with other sizes shadows it with its own).
        dynamics: The ground truth this environment steps.
        horizon: Maximum episode length.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}
    feature_names: ClassVar[tuple[str, ...]]
    feature_ranges: dict[str, tuple[float, float]]

    def __init__(self, dynamics: Dynamics, render_mode: str | None = None) -> None:
        """Build the spaces of ``dynamics``.

        Args:
            dynamics: Ground truth of this environment and split.
            render_mode: ``None`` or ``"ansi"``.
        """
        self.render_mode = check_render_mode(render_mode)
        self.dynamics = dynamics
        self.horizon = dynamics.horizon
        self.feature_ranges = dynamics.feature_ranges()
        low = np.array([self.feature_ranges[n][0] for n in dynamics.feature_names], np.float32)
        high = np.array([self.feature_ranges[n][1] for n in dynamics.feature_names], np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        if dynamics.action_kind == "discrete":
            self.action_space = spaces.Discrete(dynamics.num_actions)
        else:
            self.action_space = spaces.Box(dynamics.action_low, dynamics.action_high, dtype=np.float32)
        self._num_actions = dynamics.num_actions
        self._no_noise: list[float] = []
        self._state: np.ndarray | None = None  # float32 [S]
        self._values: list[float] = []  # the same state as Python floats, for SCALAR
        self._elapsed = 0

    # --- read-only views --------------------------------------------------------------

    @property
    def split(self) -> str:
        """``"train"`` or ``"deploy"``."""
        return self.dynamics.split

    @property
    def state(self) -> np.ndarray:
        """Copy of the hidden state ``[S]`` (ground truth: for tests and audits, not agents)."""
        if self._state is None:
            raise RuntimeError("call reset() before reading the state")
        return self._state.copy()

    # --- gymnasium API ----------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        Args:
            seed: Seeds the environment's generator (same seed, same episode).
            options: Optional ``{"state": array [S]}`` to start from a given
                hidden state (e.g. one from ``EnvModel.sample_state``).

        Returns:
            ``(observation [F], info)``.
        """
        super().reset(seed=seed)
        dyn = self.dynamics
        if options and "state" in options:
            state = np.asarray(options["state"], dtype=np.float32)
            if state.shape != (dyn.state_size,):
                raise ValueError(
                    f"options['state'] must have shape ({dyn.state_size},); got {state.shape}"
                )
            self._set_state(state.copy())
        else:
            noise = self.np_random.random(dyn.reset_noise_size, dtype=np.float32).tolist()
            self._set_state(dyn.initial_state(SCALAR, noise))
        self._elapsed = 0
        return dyn.observe(SCALAR, self._values), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Take one step.

        Args:
            action: An integer in ``[0, num_actions)`` (discrete) or a float array
                of the action space's shape (continuous; clipped to its bounds).

        Returns:
            ``(observation, reward, terminated, truncated, info)``; the reward is
            the rater's value of the new state.
        """
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        dyn = self.dynamics
        action = self._check_action(action)
        if dyn.step_noise_size:
            noise = self.np_random.random(dyn.step_noise_size, dtype=np.float32).tolist()
        else:
            noise = self._no_noise
        self._set_state(dyn.transition(SCALAR, self._values, action, noise))
        self._elapsed += 1
        terminated = bool(dyn.is_terminal(SCALAR, self._values))
        truncated = (not terminated) and self._elapsed >= self.horizon
        info = self._info()
        return dyn.observe(SCALAR, self._values), info["rater_value"], terminated, truncated, info

    def render(self) -> str | None:
        """Return a text picture of the current state (``render_mode="ansi"``), else ``None``."""
        if self.render_mode != "ansi":
            return None
        if self._state is None:
            return "(not reset)"
        return self.dynamics.render_text(self._state)

    # --- helpers ------------------------------------------------------------------------

    def _set_state(self, state: np.ndarray) -> None:
        self._state = state
        self._values = state.tolist()

    def _info(self) -> dict[str, Any]:
        dyn, values = self.dynamics, self._values
        return {
            "true_terminal_value": float(dyn.terminal_value(SCALAR, values)),
            "catastrophe": bool(dyn.catastrophe(SCALAR, values)),
            "rater_value": float(dyn.rater_value(SCALAR, values)),
            **{key: bool(flag) for key, flag in dyn.outcomes(SCALAR, values).items()},
        }

    def _check_action(self, action: Any) -> Any:
        if self._num_actions is not None:
            if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
                action = action.item()
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
                raise ValueError(
                    f"action must be an integer in [0, {self._num_actions}); got {action!r} "
                    f"of type {type(action).__name__}"
                )
            if not 0 <= action < self._num_actions:
                raise ValueError(f"action must be an integer in [0, {self._num_actions}); got {action}")
            return action
        shape = self.action_space.shape
        try:
            array = np.asarray(action, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != shape or not np.isfinite(array).all():
            raise ValueError(f"action must be a finite float array of shape {shape}; got {action!r}")
        return array.tolist()
