"""Core planner types: the model bundle and the frozen outputs of every planner.

Shapes used throughout the planners:
    B: number of states planned for at once (batch).
    K: number of candidate actions per state (for MCTS, K = A).
    A: number of discrete actions.
    S: number of worlds (posterior function draws of W, T and I taken together).
    Ds: observation (state) dimension.
    Da: action-encoding dimension (A for one-hot discrete actions, the action
        dimension for continuous actions).
    H: planning horizon (CEM).

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
import mctx
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from priorguard.models.base import FunctionDraws

__all__ = [
    "ActionStats",
    "CEMOutput",
    "PlanOutput",
    "PlanningModels",
    "SearchEmbedding",
    "SearchOutput",
    "action_stats",
    "world_std",
]


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


def _gather_draw(draws: FunctionDraws, world_index: Int[Array, " N"], x: Float[Array, "N D"]) -> Array:
    """Evaluates draw ``world_index[n]`` at ``x[n]`` for every row ``n``."""
    return jax.vmap(lambda w, row: draws.one(w, row[None])[0])(world_index, x)


def _continue(end: Float[Array, "... 1"]) -> Float[Array, "..."]:
    """``1 - clip(D, 0, 1)``: D regresses a 0/1 label, so its draws can leave [0, 1]."""
    return 1.0 - jnp.clip(end[..., 0], 0.0, 1.0)


def world_std(values: Float[Array, "... S"]) -> Float[Array, "..."]:
    """Spread across worlds (population std over the last axis), NaN-free under grad.

    Args:
        values: ``[..., S]`` per-world values.

    Returns:
        ``[...]`` standard deviation over the S worlds (0 when S = 1).
    """
    var = jnp.var(values, axis=-1)
    positive = var > 0
    # Double `where`: exact 0 for identical worlds, and a zero (not NaN) gradient there.
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


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


class ActionStats(eqx.Module):
    """Per-action value statistics across worlds: what veto and scoring rules read.

    The value of taking action k in a state is ``V(s') = T(s') + discount *
    I(s')`` at the predicted next state ``s'``, computed in every world. Leading
    batch axes are free (``[B, K]`` in planners, ``[K]`` inside a vmap); rules
    broadcast ``current_value[..., None]`` against ``mean``.

    Attributes:
        mean: ``[B, K]`` mean over worlds of the action's value.
        std: ``[B, K]`` spread over worlds (epistemic std of T + discount * I).
        current_value: ``[B]`` mean over worlds of the current state's value.
        current_std: ``[B]`` spread over worlds of the current state's value.
        world_values: ``[B, K, S]`` the per-world values.
    """

    mean: Float[Array, "B K"]
    std: Float[Array, "B K"]
    current_value: Float[Array, " B"]
    current_std: Float[Array, " B"]
    world_values: Float[Array, "B K S"]

    @classmethod
    def from_world_values(
        cls, world_values: Float[Array, "B K S"], current_world_values: Float[Array, "B S"]
    ) -> ActionStats:
        """Builds the statistics from per-world action and current-state values."""
        return cls(
            mean=jnp.mean(world_values, axis=-1),
            std=world_std(world_values),
            current_value=jnp.mean(current_world_values, axis=-1),
            current_std=world_std(current_world_values),
            world_values=world_values,
        )


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


class PlanOutput(eqx.Module):
    """What the one-step planner returns.

    Attributes:
        action: ``[B]`` chosen discrete action or ``[B, Da]`` continuous action;
            the fallback action where ``used_fallback``.
        candidate_actions: ``[B, K]`` (or ``[B, K, Da]``) the proposals from A.
        candidate_index: ``[B]`` index of the chosen candidate, -1 on fallback.
        veto_mask: ``[B, K]`` True where a candidate is vetoed.
        value_mean: ``[B, K]`` mean over worlds of T + discount * I after the action.
        value_std: ``[B, K]`` spread over worlds of the same.
        score: ``[B, K]`` the scoring rule's score (e.g. mean - kappa * std).
        used_fallback: ``[B]`` True where every candidate was vetoed.
        stats: the full :class:`ActionStats` (``[B, K]``).
    """

    action: Array  # [B] or [B, Da]
    candidate_actions: Array  # [B, K] or [B, K, Da]
    candidate_index: Int[Array, " B"]
    veto_mask: Bool[Array, "B K"]
    value_mean: Float[Array, "B K"]
    value_std: Float[Array, "B K"]
    score: Float[Array, "B K"]
    used_fallback: Bool[Array, " B"]
    stats: ActionStats


class SearchEmbedding(eqx.Module):
    """The MCTS embedding of a node: where the rollout is, and in which world.

    Attributes:
        obs: ``[N, Ds]`` predicted observation at the node.
        world_index: ``[N]`` the world this rollout follows (fixed along it).
        veto_mask: ``[N, A]`` the node's inadmissible child actions (its vetoes,
            with the fallback action left admissible where all are vetoed),
            kept so that a vetoed child, if ever expanded, is penalised.
    """

    obs: Float[Array, "N Ds"]
    world_index: Int[Array, " N"]
    veto_mask: Bool[Array, "N A"]


class SearchOutput(eqx.Module):
    """What the MCTS planner returns. K = A: every action is a candidate.

    Attributes:
        action: ``[B]`` chosen action (the fallback where ``used_fallback``).
        veto_mask: ``[B, A]`` root vetoes (from one-step statistics).
        value_mean: ``[B, A]`` mean over worlds of the searched root Q-values
            (unvisited actions completed with that world's root value).
        value_std: ``[B, A]`` spread over worlds of the same.
        score: ``[B, A]`` scoring rule applied to the search statistics.
        used_fallback: ``[B]`` True where every root action was vetoed.
        step_stats: ``[B, A]`` one-step :class:`ActionStats` the root vetoes
            used (None without a veto rule).
        visit_counts: ``[S, B, A]`` root visit counts per world.
        world_qvalues: ``[S, B, A]`` completed root Q-values per world.
        world_actions: ``[S, B]`` the action mctx's policy picked in each world.
        search_tree: the mctx ``Tree``, batch ``[S * B]`` world-major
            (row ``s * B + b`` is state b searched in world s).
    """

    action: Int[Array, " B"]
    veto_mask: Bool[Array, "B A"]
    value_mean: Float[Array, "B A"]
    value_std: Float[Array, "B A"]
    score: Float[Array, "B A"]
    used_fallback: Bool[Array, " B"]
    step_stats: ActionStats | None
    visit_counts: Float[Array, "S B A"]
    world_qvalues: Float[Array, "S B A"]
    world_actions: Int[Array, "S B"]
    search_tree: mctx.Tree


class CEMOutput(eqx.Module):
    """What the CEM/MPC planner returns. K = population size.

    Attributes:
        action: ``[B, Da]`` first action of ``plan`` (or the fallback).
        plan: ``[B, H, Da]`` mean of the final elite set, clipped to the bounds.
        plan_value_mean: ``[B]`` mean over worlds of the plan's return.
        plan_value_std: ``[B]`` spread over worlds of the plan's return.
        plan_vetoed: ``[B]`` True where the plan's first action is vetoed.
        population: ``[B, K, H, Da]`` the final population of sequences.
        elite_mask: ``[B, K]`` True for the final elites.
        veto_mask: ``[B, K]`` vetoes of the final population (first action).
        value_mean: ``[B, K]`` mean over worlds of each sequence's return.
        value_std: ``[B, K]`` spread over worlds of the same.
        score: ``[B, K]`` scoring rule applied to the returns.
        used_fallback: ``[B]`` True where the plan was vetoed or no sequence
            of the final population was admissible.
    """

    action: Float[Array, "B Da"]
    plan: Float[Array, "B H Da"]
    plan_value_mean: Float[Array, " B"]
    plan_value_std: Float[Array, " B"]
    plan_vetoed: Bool[Array, " B"]
    population: Float[Array, "B K H Da"]
    elite_mask: Bool[Array, "B K"]
    veto_mask: Bool[Array, "B K"]
    value_mean: Float[Array, "B K"]
    value_std: Float[Array, "B K"]
    score: Float[Array, "B K"]
    used_fallback: Bool[Array, " B"]
