"""The one-step veto planner: propose with A, predict with W, score with T + I, veto."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard.planners.base import PlanOutput
from priorguard.planners.veto import VetoRule, apply_rule, fallback_where, select_action
from priorguard.planners.worlds import PlanningModels, action_stats, check_fallback_action, checked_stats

__all__ = ["plan_one_step"]


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
