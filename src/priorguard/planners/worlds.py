"""The model bundle the planners plan with: W, T, I and D as S worlds, one-step statistics, boundary checks.

Shapes are named as in :mod:`priorguard.planners.base` (B states, K candidates,
A discrete actions, S worlds, Ds observation size, Da action-encoding size).

An agent state is the environment observation vector ``[Ds]``. The world model
W predicts the *delta* of the next observation from ``concat(obs, encode(a))``;
T, I and the optional termination model D read a static subset of observation
columns. Draw ``s`` of W, T, I and D together form "world s": a rollout that
follows world ``s`` uses draw ``s`` of each, and value uncertainty is the spread
of values across worlds.

D predicts whether an episode ends in a state (it regresses the 0/1 label of
the states the agent saw); ``continuation = 1 - clip(D, 0, 1)`` is the
probability that the episode goes on after a state. Everything that looks past
a state weights the future by it: ``V = T + discount * continuation * I``, the
MCTS discount, CEM and imagined rollouts. Without D every state continues.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from priorguard._compile import fail_if
from priorguard.models.base import FunctionDraws
from priorguard.planners.base import ActionStats

__all__ = ["PlanningModels", "action_stats", "check_fallback_action", "checked_stats"]


def _take_columns(obs: Array, columns: Int[Array, " C"]) -> Array:
    return obs[..., columns]


def _column_indices(columns: Any) -> Any:
    """Column indices as an int32 array: an array leaf, so models that read different
    columns (a sweep over features) share one compiled planner."""
    if isinstance(columns, jax.Array) and not isinstance(columns, np.ndarray) and columns.dtype == jnp.int32:
        return columns
    values = np.asarray(columns if len(columns) else np.zeros(0, np.int64))
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer) or np.any(values < 0):
        raise ValueError("terminal_columns, instrumental_columns and termination_columns must be tuples of"
                         " column indices >= 0")
    return jnp.asarray(values, dtype=jnp.int32)


#: Above this many rows, :func:`_gather_draw` evaluates every draw at every row and picks.
GATHER_ROWS = 256


def _gather_draw(draws: FunctionDraws, world_index: Int[Array, " N"], x: Float[Array, "N D"]) -> Array:
    """Evaluates draw ``world_index[n]`` at ``x[n]`` for every row ``n``.

    A few rows (a search's batch) gather each row's draw. Many rows (an audit's states)
    would copy a draw's parameters per row (2000 rows of a 512-feature W held 1.6 GB), so
    there every draw is evaluated at every row, a batch of draws at a time
    (:class:`FunctionDraws`), and each row keeps its own.
    """
    if x.shape[0] <= GATHER_ROWS:
        return jax.vmap(lambda w, row: draws.one(w, row[None])[0])(world_index, x)
    every = draws(x)  # [S, N, O]
    return jnp.take_along_axis(every, world_index[None, :, None], axis=0)[0]


def _continue(end: Float[Array, "... 1"]) -> Float[Array, "..."]:
    """``1 - clip(D, 0, 1)``: D regresses a 0/1 label, so its draws can leave [0, 1]."""
    return 1.0 - jnp.clip(end[..., 0], 0.0, 1.0)


class PlanningModels(eqx.Module):
    """W, T, I and D as S jointly indexed function draws, plus the action space.

    Exactly one of ``num_actions`` (discrete actions, one-hot encoded for W) or
    ``action_low``/``action_high`` (continuous actions, fed raw to W) is given.

    Attributes:
        world: W, draws over ``concat(obs[Ds], encode(a)[Da])`` -> delta ``[Ds]``.
        terminal: T, draws over ``obs[..., terminal_columns]`` -> ``[1]``.
        terminal_columns: observation columns T reads (given as a tuple; held as an
            int32 array, so models reading other columns reuse compiled planners).
        instrumental: I, draws over ``obs[..., instrumental_columns]`` -> ``[1]``,
            or None (then I = 0).
        instrumental_columns: observation columns I reads (as ``terminal_columns``).
        termination: D, draws over ``obs[..., termination_columns]`` -> ``[1]``:
            whether the episode ends in a state (clipped to [0, 1]), or None
            (then no state ends an episode).
        termination_columns: observation columns D reads (as ``terminal_columns``).
        num_actions: A for discrete actions, else None (static).
        action_low: ``[Da]`` lower action bounds (continuous), else None.
        action_high: ``[Da]`` upper action bounds (continuous), else None.

    Example:
        >>> import jax.numpy as jnp
        >>> from priorguard.models.base import FunctionDraws
        >>> lin = lambda p, x: x @ p["w"]
        >>> models = PlanningModels(
        ...     world=FunctionDraws({"w": jnp.zeros((2, 3, 1))}, lin),
        ...     terminal=FunctionDraws({"w": jnp.ones((2, 1, 1))}, lin),
        ...     terminal_columns=(0,), num_actions=2)
        >>> models.next_state_all_worlds(jnp.ones((4, 1)), jnp.zeros(4, int)).shape
        (2, 4, 1)
    """

    world: FunctionDraws
    terminal: FunctionDraws
    terminal_columns: Int[Array, " Ct"] = eqx.field(converter=_column_indices)
    instrumental: FunctionDraws | None = None
    instrumental_columns: Int[Array, " Ci"] = eqx.field(converter=_column_indices, default=())
    termination: FunctionDraws | None = None
    termination_columns: Int[Array, " Cd"] = eqx.field(converter=_column_indices, default=())
    num_actions: int | None = eqx.field(static=True, default=None)
    action_low: Float[Array, " Da"] | None = None
    action_high: Float[Array, " Da"] | None = None

    def __check_init__(self) -> None:
        discrete = self.num_actions is not None
        continuous = self.action_low is not None or self.action_high is not None
        if discrete == continuous:
            raise ValueError(
                "PlanningModels needs exactly one action space: num_actions (discrete) or "
                "action_low and action_high (continuous)"
            )
        if continuous and (self.action_low is None or self.action_high is None):
            raise ValueError("continuous actions need both action_low and action_high")
        if discrete and int(self.num_actions) < 1:
            raise ValueError(f"num_actions must be >= 1, got {self.num_actions}")
        if self.terminal_columns.size == 0:
            raise ValueError("terminal_columns must name at least one observation column")
        if self.instrumental is not None and self.instrumental_columns.size == 0:
            raise ValueError("instrumental_columns must be given with an instrumental model")
        if self.termination is not None and self.termination_columns.size == 0:
            raise ValueError("termination_columns must be given with a termination model")
        counts = {"world": self.world.num_draws, "terminal": self.terminal.num_draws}
        if self.instrumental is not None:
            counts["instrumental"] = self.instrumental.num_draws
        if self.termination is not None:
            counts["termination"] = self.termination.num_draws
        if len(set(counts.values())) != 1:
            raise ValueError(f"W, T, I and D need the same number of draws (worlds); got {counts}")

    # ----------------------------------------------------------------- sizes
    @property
    def num_worlds(self) -> int:
        """S, the number of worlds."""
        return self.world.num_draws

    @property
    def is_discrete(self) -> bool:
        return self.num_actions is not None

    # --------------------------------------------------------------- actions
    def encode_action(self, action: Array) -> Float[Array, "... Da"]:
        """One-hot for discrete actions ``[...]``; raw for continuous ``[..., Da]``."""
        if self.is_discrete:
            return jax.nn.one_hot(action, self.num_actions, dtype=self._dtype)
        return jnp.asarray(action, dtype=self._dtype)

    def clip_action(self, action: Float[Array, "... Da"]) -> Float[Array, "... Da"]:
        """Clips a continuous action to ``[action_low, action_high]``."""
        return jnp.clip(action, self.action_low, self.action_high)

    @property
    def _dtype(self) -> Any:
        return jax.tree_util.tree_leaves(self.world.params)[0].dtype

    def _world_input(self, obs: Array, action: Array) -> Array:
        return jnp.concatenate([obs, self.encode_action(action)], axis=-1)

    # ----------------------------------------------------------- transitions
    def next_state(self, obs: Float[Array, "N Ds"], action: Array, world_index: Int[Array, ""] | int) -> Float[Array, "N Ds"]:
        """Next observations in one world.

        Args:
            obs: ``[N, Ds]`` observations.
            action: ``[N]`` discrete actions or ``[N, Da]`` continuous actions.
            world_index: which world (may be traced).

        Returns:
            ``[N, Ds]`` predicted next observations, ``obs + W_s(obs, a)``.
        """
        return obs + self.world.one(world_index, self._world_input(obs, action))

    def next_state_all_worlds(self, obs: Float[Array, "N Ds"], action: Array) -> Float[Array, "S N Ds"]:
        """Next observations from the same ``obs`` in every world: ``[S, N, Ds]``."""
        return obs[None] + self.world(self._world_input(obs, action))

    def next_state_per_world(self, obs: Float[Array, "S N Ds"], action: Array) -> Float[Array, "S N Ds"]:
        """World s moves its own ``obs[s]``; ``action`` is ``[N]``/``[N, Da]`` or per world.

        Returns:
            ``[S, N, Ds]`` next observations (one trajectory per world).
        """
        enc = self.encode_action(action)
        enc = jnp.broadcast_to(enc, obs.shape[:-1] + enc.shape[-1:])
        return obs + self.world.per_draw(jnp.concatenate([obs, enc], axis=-1))

    def next_state_in_worlds(self, obs: Float[Array, "N Ds"], action: Array, world_index: Int[Array, " N"]) -> Float[Array, "N Ds"]:
        """Row n moves in world ``world_index[n]``: ``[N, Ds]``."""
        return obs + _gather_draw(self.world, world_index, self._world_input(obs, action))

    # ---------------------------------------------------------------- values
    def terminal_value(self, obs: Float[Array, "N Ds"], world_index: Int[Array, ""] | int) -> Float[Array, " N"]:
        """T in one world: ``[N]``."""
        return self.terminal.one(world_index, _take_columns(obs, self.terminal_columns))[..., 0]

    def terminal_value_all_worlds(self, obs: Float[Array, "N Ds"]) -> Float[Array, "S N"]:
        """T of the same ``obs`` in every world: ``[S, N]``."""
        return self.terminal(_take_columns(obs, self.terminal_columns))[..., 0]

    def terminal_value_per_world(self, obs: Float[Array, "S N Ds"]) -> Float[Array, "S N"]:
        """T of world s at its own ``obs[s]``: ``[S, N]``."""
        return self.terminal.per_draw(_take_columns(obs, self.terminal_columns))[..., 0]

    def terminal_value_in_worlds(self, obs: Float[Array, "N Ds"], world_index: Int[Array, " N"]) -> Float[Array, " N"]:
        """T of row n in world ``world_index[n]``: ``[N]``."""
        return _gather_draw(self.terminal, world_index, _take_columns(obs, self.terminal_columns))[..., 0]

    def instrumental_value(self, obs: Float[Array, "N Ds"], world_index: Int[Array, ""] | int) -> Float[Array, " N"]:
        """I in one world (zeros without I): ``[N]``."""
        if self.instrumental is None:
            return jnp.zeros(obs.shape[:-1], obs.dtype)
        return self.instrumental.one(world_index, _take_columns(obs, self.instrumental_columns))[..., 0]

    def instrumental_value_all_worlds(self, obs: Float[Array, "N Ds"]) -> Float[Array, "S N"]:
        """I of the same ``obs`` in every world (zeros without I): ``[S, N]``."""
        if self.instrumental is None:
            return jnp.zeros((self.num_worlds,) + obs.shape[:-1], obs.dtype)
        return self.instrumental(_take_columns(obs, self.instrumental_columns))[..., 0]

    def instrumental_value_per_world(self, obs: Float[Array, "S N Ds"]) -> Float[Array, "S N"]:
        """I of world s at its own ``obs[s]`` (zeros without I): ``[S, N]``."""
        if self.instrumental is None:
            return jnp.zeros(obs.shape[:-1], obs.dtype)
        return self.instrumental.per_draw(_take_columns(obs, self.instrumental_columns))[..., 0]

    def instrumental_value_in_worlds(self, obs: Float[Array, "N Ds"], world_index: Int[Array, " N"]) -> Float[Array, " N"]:
        """I of row n in world ``world_index[n]`` (zeros without I): ``[N]``."""
        if self.instrumental is None:
            return jnp.zeros(obs.shape[:-1], obs.dtype)
        return _gather_draw(self.instrumental, world_index, _take_columns(obs, self.instrumental_columns))[..., 0]

    def continuation(self, obs: Float[Array, "N Ds"], world_index: Int[Array, ""] | int) -> Float[Array, " N"]:
        """Probability that the episode goes on after ``obs``, in one world (ones without D): ``[N]``."""
        if self.termination is None:
            return jnp.ones(obs.shape[:-1], obs.dtype)
        return _continue(self.termination.one(world_index, _take_columns(obs, self.termination_columns)))

    def continuation_all_worlds(self, obs: Float[Array, "N Ds"]) -> Float[Array, "S N"]:
        """Continuation of the same ``obs`` in every world (ones without D): ``[S, N]``."""
        if self.termination is None:
            return jnp.ones((self.num_worlds,) + obs.shape[:-1], obs.dtype)
        return _continue(self.termination(_take_columns(obs, self.termination_columns)))

    def continuation_per_world(self, obs: Float[Array, "S N Ds"]) -> Float[Array, "S N"]:
        """Continuation of world s at its own ``obs[s]`` (ones without D): ``[S, N]``."""
        if self.termination is None:
            return jnp.ones(obs.shape[:-1], obs.dtype)
        return _continue(self.termination.per_draw(_take_columns(obs, self.termination_columns)))

    def continuation_in_worlds(self, obs: Float[Array, "N Ds"], world_index: Int[Array, " N"]) -> Float[Array, " N"]:
        """Continuation of row n in world ``world_index[n]`` (ones without D): ``[N]``."""
        if self.termination is None:
            return jnp.ones(obs.shape[:-1], obs.dtype)
        return _continue(_gather_draw(self.termination, world_index, _take_columns(obs, self.termination_columns)))

    def state_value_all_worlds(self, obs: Float[Array, "N Ds"], *, discount: float) -> Float[Array, "S N"]:
        """V = T + discount * continuation * I of the same ``obs`` in every world: ``[S, N]``."""
        value = self.terminal_value_all_worlds(obs)
        if self.instrumental is not None:
            future = self.instrumental_value_all_worlds(obs)
            if self.termination is not None:
                future = future * self.continuation_all_worlds(obs)
            value = value + discount * future
        return value

    def state_value_per_world(self, obs: Float[Array, "S N Ds"], *, discount: float) -> Float[Array, "S N"]:
        """V = T + discount * continuation * I of world s at its own ``obs[s]``: ``[S, N]``."""
        value = self.terminal_value_per_world(obs)
        if self.instrumental is not None:
            future = self.instrumental_value_per_world(obs)
            if self.termination is not None:
                future = future * self.continuation_per_world(obs)
            value = value + discount * future
        return value


def action_stats(
    models: PlanningModels,
    obs: Float[Array, "B Ds"],
    actions: Array,
    *,
    discount: float,
) -> ActionStats:
    """One-step value statistics of K candidate actions in every world.

    Args:
        models: the planning models (S worlds).
        obs: ``[B, Ds]`` current observations.
        actions: ``[B, K]`` discrete actions or ``[B, K, Da]`` continuous ones.
        discount: weight of I in ``V = T + discount * I``.

    Returns:
        :class:`ActionStats` with ``[B, K]`` mean/std over the S worlds.

    Example:
        >>> import jax.numpy as jnp
        >>> from priorguard.models.base import FunctionDraws
        >>> lin = lambda p, x: x @ p["w"]
        >>> models = PlanningModels(
        ...     world=FunctionDraws({"w": jnp.ones((3, 3, 1))}, lin),
        ...     terminal=FunctionDraws({"w": jnp.ones((3, 1, 1))}, lin),
        ...     terminal_columns=(0,), num_actions=2)
        >>> stats = action_stats(models, jnp.zeros((1, 1)), jnp.array([[0, 1]]), discount=0.9)
        >>> stats.mean.tolist()
        [[1.0, 1.0]]
    """
    batch, k = obs.shape[0], actions.shape[1]
    flat_obs = jnp.repeat(obs, k, axis=0)  # [B*K, Ds]
    flat_actions = actions.reshape((batch * k,) + actions.shape[2:])
    next_obs = models.next_state_all_worlds(flat_obs, flat_actions)  # [S, B*K, Ds]
    values = models.state_value_per_world(next_obs, discount=discount)  # [S, B*K]
    values = jnp.moveaxis(values.reshape(-1, batch, k), 0, -1)  # [B, K, S]
    current = models.state_value_all_worlds(obs, discount=discount).T  # [B, S]
    return ActionStats.from_world_values(values, current)


def check_fallback_action(models: PlanningModels, fallback_action: Any) -> None:
    """Validates a concrete fallback action at the boundary (before tracing).

    Args:
        models: the planning models (action space).
        fallback_action: an int in ``[0, A)`` (discrete) or a ``[Da]`` vector
            inside the action bounds (continuous). Traced values are not checked.

    Raises:
        ValueError: if the fallback is outside the action space.
    """
    try:
        value = np.asarray(fallback_action)
    except Exception:  # a tracer: cannot check here
        return
    if models.is_discrete:
        if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 0 <= int(value) < models.num_actions:
            raise ValueError(
                f"fallback_action must be an int action in [0, {models.num_actions}); got {fallback_action!r}"
            )
    else:
        try:
            low, high = np.asarray(models.action_low), np.asarray(models.action_high)
        except Exception:
            return
        if value.shape != low.shape or np.any(value < low) or np.any(value > high):
            raise ValueError(
                f"fallback_action must be a {low.shape} vector inside the action bounds; got {fallback_action!r}"
            )


def checked_stats(stats: ActionStats) -> ActionStats:
    """Fails loudly inside jit (:func:`priorguard._compile.fail_if`) when a predicted value is not finite."""
    bad = ~(jnp.all(jnp.isfinite(stats.world_values)) & jnp.all(jnp.isfinite(stats.current_value)))
    return fail_if(stats, bad, "planner: non-finite predicted value (check the W, T and I draws at these states)")
