"""Output types of the planners: the statistics rules read and what each planner returns.

Shapes used throughout the planners:
    B: number of states planned for at once (batch).
    K: number of candidate actions per state (for MCTS, K = A).
    A: number of discrete actions.
    S: number of worlds (posterior function draws of W, T and I taken together).
    Ds: observation (state) dimension.
    Da: action-encoding dimension (A for one-hot discrete actions, the action
        dimension for continuous actions).
    H: planning horizon (CEM).

The models these types are computed from, and what a "world" is, are in
:mod:`priorguard.planners.worlds`.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import mctx
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "ActionStats",
    "CEMOutput",
    "PlanOutput",
    "SearchEmbedding",
    "SearchOutput",
    "world_std",
]


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
