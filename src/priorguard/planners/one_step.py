"""The one-step veto planner: propose with A, predict with W, score with T + I, veto."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import fail_if
from priorguard.planners.base import ActionStats, PlanningModels, PlanOutput, action_stats
from priorguard.planners.veto import VetoRule, apply_rule, fallback_where, select_action

__all__ = ["check_fallback_action", "checked_stats", "plan_one_step"]


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


def plan_one_step(
    models: PlanningModels,
    proposal: Any,
    proposal_params: Any,
    key: PRNGKeyArray,
    obs: Float[Array, "B Ds"],
    *,
    num_candidates: int,
    fallback_action: Any,
    veto: VetoRule | None = None,
    discount: float = 0.99,
    replace: bool = False,
) -> PlanOutput:
    """One-step planning with vetoes over S worlds.

    Draws K candidate actions per state from A, predicts the next observation
    in every world with W, scores ``V = T + discount * I`` there, applies the
    veto/scoring rule to the per-action statistics across worlds, and returns
    the best-scoring non-vetoed candidate. When every candidate is vetoed it
    returns ``fallback_action`` and sets ``used_fallback``; a vetoed action is
    never returned otherwise.

    B is the number of states, K = ``num_candidates``, S the number of worlds,
    Ds the observation size. Pure and jit-able (``eqx.filter_jit`` makes the
    non-array arguments static); vmappable over extra leading state axes.

    Args:
        models: W, T, I draws and the action space.
        proposal: A, e.g. :class:`UniformProposal` (discrete) or
            :class:`BoxUniformProposal` (continuous).
        proposal_params: A's parameters (None for fixed proposals).
        key: consumed by the candidate draw.
        obs: ``[B, Ds]`` current observations.
        num_candidates: K.
        fallback_action: the declared fallback (int, or ``[Da]`` vector).
        veto: a :class:`VetoRule` (e.g. ``chain(...)``); None vetoes nothing
            and scores by the mean.
        discount: weight of I in ``T + discount * I``.
        replace: draw discrete candidates with replacement (else distinct).

    Returns:
        A :class:`PlanOutput` with ``[B, K]`` veto mask and value statistics.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from priorguard.models.base import FunctionDraws
        >>> from priorguard.planners import PlanningModels, UniformProposal
        >>> lin = lambda p, x: x @ p["w"]
        >>> w = jnp.tile(jnp.array([[0.0], [-1.0], [1.0]]), (2, 1, 1))  # delta = +1 for action 1
        >>> models = PlanningModels(world=FunctionDraws({"w": w}, lin),
        ...                         terminal=FunctionDraws({"w": jnp.ones((2, 1, 1))}, lin),
        ...                         terminal_columns=(0,), num_actions=2)
        >>> out = plan_one_step(models, UniformProposal(2), None, jax.random.key(0),
        ...                     jnp.zeros((3, 1)), num_candidates=2, fallback_action=0)
        >>> out.action.tolist(), out.used_fallback.tolist()
        ([1, 1, 1], [False, False, False])
    """
    check_fallback_action(models, fallback_action)
    if models.is_discrete:
        candidates = proposal.sample(proposal_params, key, obs, num_candidates, replace=replace)  # [B, K]
    else:
        candidates = models.clip_action(proposal.sample(proposal_params, key, obs, num_candidates))  # [B, K, Da]
    stats = checked_stats(action_stats(models, obs, candidates, discount=discount))
    veto_mask, score = apply_rule(veto, stats)
    index, used_fallback = select_action(score, veto_mask)
    safe_index = jnp.maximum(index, 0)
    chosen = jnp.take_along_axis(
        candidates, safe_index.reshape((-1,) + (1,) * (candidates.ndim - 1)), axis=1
    )[:, 0]
    action = fallback_where(used_fallback, chosen, fallback_action)
    return PlanOutput(
        action=action,
        candidate_actions=candidates,
        candidate_index=index,
        veto_mask=veto_mask,
        value_mean=stats.mean,
        value_std=stats.std,
        score=score,
        used_fallback=used_fallback,
        stats=stats,
    )
