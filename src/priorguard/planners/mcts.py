"""MCTS over sampled worlds, on mctx, with vetoes at the root *and* in the interior.

Each state is searched once per world: the search batch is ``[S * B]``
(world-major, row ``s * B + b`` is state b in world s) and the embedding
carries the world index, so a rollout follows one sampled world of W, T and I
from root to leaf. The reward of a transition is T at the node reached (T is
consulted at every node), the leaf value is I there (0 without I), and the
prior logits come from the proposal A. With a termination model D, a
transition's discount is ``discount * continuation`` of the node reached, so a
state where the episode ends in that world has no future there (mctx's
bootstrap and the search below it count for nothing). Value uncertainty is the
spread of the root Q-values across worlds.

Vetoes. mctx masks invalid actions only at the root (``invalid_actions``).
Interior vetoes are enforced in the recurrent function:

1. when a node is expanded, the veto rule is applied to the one-step
   statistics (across *all* worlds) of every action at the node's state;
   vetoed actions get prior logit ``finfo.min`` (probability exactly 0). With
   these priors neither MuZero (PUCT) nor Gumbel MuZero interior selection
   picks a vetoed child while an admissible one exists: an admissible child
   always has a strictly positive exploration/probability term, a vetoed one
   has none (for MuZero this holds while ``1.25 / (A * sqrt(N)) > 1e-7``, the
   size of mctx's tie-breaking noise);
2. as a backstop, the node's veto mask is kept in the embedding; should a
   vetoed child be expanded anyway, its transition gets reward
   ``veto_penalty`` and discount 0 (the child becomes terminal).

When every action at an interior node is vetoed, the declared fallback action
is left admissible there, mirroring what the planner itself does.

The vetoes use the same one-step statistics as :func:`plan_one_step`
(``T + discount * I`` one step ahead, across worlds), so a threshold
calibrated once (e.g. by split conformal) means the same thing in every
planner; the scoring rule (e.g. LCB) is applied to the searched Q-values.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import mctx
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from priorguard.planners.base import ActionStats, SearchEmbedding, SearchOutput
from priorguard.planners.veto import VetoRule, apply_rule, fallback_where, select_action
from priorguard.planners.worlds import PlanningModels, action_stats, check_fallback_action, checked_stats

__all__ = ["make_recurrent_fn", "make_search_root", "mask_vetoed_logits", "node_veto_mask", "plan_mcts"]


def mask_vetoed_logits(logits: Float[Array, "N A"], veto_mask: Bool[Array, "N A"]) -> Float[Array, "N A"]:
    """Gives vetoed actions the lowest finite logit (softmax probability 0, no NaN).

    Args:
        logits: ``[N, A]`` prior logits.
        veto_mask: ``[N, A]`` True where vetoed.

    Returns:
        ``[N, A]`` masked logits, shifted so the largest is 0.
    """
    logits = logits - jnp.max(logits, axis=-1, keepdims=True)
    return jnp.where(veto_mask, jnp.finfo(logits.dtype).min, logits)


def node_veto_mask(
    models: PlanningModels,
    obs: Float[Array, "N Ds"],
    veto: VetoRule,
    *,
    discount: float,
    fallback_action: Any,
) -> tuple[Bool[Array, "N A"], Bool[Array, "N A"], ActionStats]:
    """Veto mask over all A actions at N states, and the mask the search uses.

    Args:
        models: planning models (discrete actions).
        obs: ``[N, Ds]`` observations.
        veto: the veto rule.
        discount: weight of I in ``T + discount * I``.
        fallback_action: int action left admissible where all are vetoed.

    Returns:
        ``(veto_mask [N, A], search_mask [N, A], stats)``: the rule's vetoes;
        the same with the fallback action unmasked where every action is
        vetoed (what the search treats as inadmissible); and the one-step
        statistics they came from.
    """
    num_actions = models.num_actions
    actions = jnp.broadcast_to(jnp.arange(num_actions, dtype=jnp.int32), obs.shape[:1] + (num_actions,))
    stats = action_stats(models, obs, actions, discount=discount)
    veto_mask = veto.veto(stats)
    all_vetoed = jnp.all(veto_mask, axis=-1, keepdims=True)
    is_fallback = jnp.arange(num_actions) == fallback_action
    return veto_mask, veto_mask & ~(all_vetoed & is_fallback), stats


def make_recurrent_fn(
    models: PlanningModels,
    proposal: Any,
    *,
    discount: float,
    fallback_action: Any,
    veto: VetoRule | None = None,
    interior_veto: bool = True,
    veto_penalty: float = -1e6,
    world_major: bool = True,
) -> mctx.RecurrentFn:
    """The mctx ``recurrent_fn`` over sampled worlds, with interior vetoes.

    ``recurrent_fn(params, key, action[N], embedding) -> (RecurrentFnOutput,
    SearchEmbedding)`` where ``params`` are the proposal's parameters and N is
    the search batch. The key is unused (the worlds are fixed functions).

    Row n follows world ``embedding.world_index[n]``. With ``world_major``
    (what :func:`make_search_root` builds: N = S * B and row ``s * B + b`` in
    world s) each world's rows are evaluated together, one batched call per
    world; without it every row gathers its own draw's parameters (any
    assignment of worlds to rows, slower).

    Args:
        models: planning models (discrete actions).
        proposal: A, giving the prior logits at every node.
        discount: mctx discount, also the weight of I in the veto statistics.
        fallback_action: left admissible at nodes where every action is vetoed.
        veto: veto rule; None disables interior vetoes.
        interior_veto: apply ``veto`` at interior nodes (costs A * S one-step
            evaluations per expansion).
        veto_penalty: reward of a vetoed transition if one is ever expanded.
        world_major: rows are laid out world-major (see above).

    Returns:
        The recurrent function.
    """
    use_veto = veto is not None and interior_veto
    num_worlds = models.num_worlds

    def step_in_worlds(obs: Array, action: Array, world: Array) -> tuple[Array, Array, Array, Array]:
        if world_major:
            if obs.shape[0] % num_worlds:
                raise ValueError(f"world-major batch of {obs.shape[0]} rows is not a multiple of S={num_worlds}")
            per_world = (num_worlds, obs.shape[0] // num_worlds)
            next_obs = models.next_state_per_world(obs.reshape(per_world + obs.shape[1:]), action.reshape(per_world))
            reward = models.terminal_value_per_world(next_obs).reshape(-1)
            value = models.instrumental_value_per_world(next_obs).reshape(-1)
            going_on = models.continuation_per_world(next_obs).reshape(-1)
            return next_obs.reshape(obs.shape), reward, value, going_on
        next_obs = models.next_state_in_worlds(obs, action, world)
        reward = models.terminal_value_in_worlds(next_obs, world)
        value = models.instrumental_value_in_worlds(next_obs, world)
        return next_obs, reward, value, models.continuation_in_worlds(next_obs, world)

    def recurrent_fn(
        params: Any, key: PRNGKeyArray, action: Array, embedding: SearchEmbedding
    ) -> tuple[mctx.RecurrentFnOutput, SearchEmbedding]:
        del key
        world = embedding.world_index
        was_vetoed = jnp.take_along_axis(embedding.veto_mask, action[:, None], axis=1)[:, 0]
        next_obs, reward, value, going_on = step_in_worlds(embedding.obs, action, world)
        logits = proposal.logits(params, next_obs)
        if use_veto:
            # The interior statistics (A actions x S worlds per row) are most of a
            # simulation's cost; a rule that vetoes nothing (e.g. ``disarmed``) skips them.
            def node_mask() -> Array:
                return node_veto_mask(models, next_obs, veto, discount=discount, fallback_action=fallback_action)[1]

            mask = jax.lax.cond(veto.can_veto(), node_mask, lambda: jnp.zeros(logits.shape, dtype=bool))
            logits = mask_vetoed_logits(logits, mask)
        else:
            mask = jnp.zeros(logits.shape, dtype=bool)
        output = mctx.RecurrentFnOutput(
            reward=jnp.where(was_vetoed, jnp.asarray(veto_penalty, reward.dtype), reward),
            # D's continuation discounts everything after a state where the episode may end
            discount=jnp.where(was_vetoed, 0.0, discount * going_on.astype(reward.dtype)),
            prior_logits=logits,
            value=value,
        )
        return output, SearchEmbedding(obs=next_obs, world_index=world, veto_mask=mask)

    return recurrent_fn


def make_search_root(
    models: PlanningModels,
    proposal: Any,
    proposal_params: Any,
    obs: Float[Array, "B Ds"],
    *,
    discount: float,
    fallback_action: Any,
    veto: VetoRule | None = None,
) -> tuple[mctx.RootFnOutput, Bool[Array, "SB A"], Bool[Array, "B A"], Bool[Array, " B"], ActionStats | None]:
    """The ``[S * B]`` world-major search root and the root vetoes.

    Args:
        models: planning models (discrete actions, S worlds).
        proposal: A.
        proposal_params: A's parameters.
        obs: ``[B, Ds]`` observations to plan for.
        discount: weight of I in the veto statistics.
        fallback_action: int, left admissible where every root action is vetoed.
        veto: veto rule or None.

    Returns:
        ``(root, invalid_actions [S*B, A], veto_mask [B, A], used_fallback [B],
        step_stats)``; ``step_stats`` is None without a veto rule.
    """
    num_worlds, batch = models.num_worlds, obs.shape[0]
    if veto is None:
        veto_mask = jnp.zeros((batch, models.num_actions), dtype=bool)
        search_mask, step_stats = veto_mask, None
    else:
        veto_mask, search_mask, step_stats = node_veto_mask(
            models, obs, veto, discount=discount, fallback_action=fallback_action
        )
        step_stats = checked_stats(step_stats)
    used_fallback = jnp.all(veto_mask, axis=-1)
    root_obs = jnp.tile(obs, (num_worlds, 1))  # [S*B, Ds]
    world_index = jnp.repeat(jnp.arange(num_worlds, dtype=jnp.int32), batch)  # [S*B]
    invalid_actions = jnp.tile(search_mask, (num_worlds, 1))  # [S*B, A]
    logits = jnp.tile(proposal.logits(proposal_params, obs), (num_worlds, 1))
    root = mctx.RootFnOutput(
        prior_logits=logits,
        value=models.instrumental_value_per_world(root_obs.reshape(num_worlds, batch, -1)).reshape(-1),
        embedding=SearchEmbedding(obs=root_obs, world_index=world_index, veto_mask=invalid_actions),
    )
    return root, invalid_actions, veto_mask, used_fallback, step_stats


def plan_mcts(
    models: PlanningModels,
    proposal: Any,
    proposal_params: Any,
    key: PRNGKeyArray,
    obs: Float[Array, "B Ds"],
    *,
    num_simulations: int,
    fallback_action: int,
    veto: VetoRule | None = None,
    policy: Literal["gumbel", "muzero"] = "gumbel",
    discount: float = 0.99,
    max_depth: int | None = None,
    interior_veto: bool = True,
    veto_penalty: float = -1e6,
    max_num_considered_actions: int = 16,
    gumbel_scale: float = 1.0,
    dirichlet_fraction: float = 0.25,
    dirichlet_alpha: float = 0.3,
    pb_c_init: float = 1.25,
    pb_c_base: float = 19652.0,
) -> SearchOutput:
    """MCTS with vetoes over S sampled worlds (mctx MuZero or Gumbel MuZero).

    Each of the B states is searched in each of the S worlds (search batch
    ``S * B``). Root vetoes come from the one-step statistics of every action
    across worlds; interior vetoes are enforced as described in the module
    docstring. After the search, the root Q-values of each world (unvisited
    actions completed by that world's root value) give per-action mean and
    std across worlds; the scoring rule is applied to them and the best
    non-vetoed action that was visited in some world is chosen. When every
    root action is vetoed the fallback action is returned and reported.

    Args:
        models: planning models (discrete actions).
        proposal: A, a discrete proposal (prior logits at every node).
        proposal_params: A's parameters.
        key: consumed by the search.
        obs: ``[B, Ds]`` observations.
        num_simulations: simulations per (state, world) search.
        fallback_action: declared fallback action (int in ``[0, A)``).
        veto: veto/scoring rule, or None.
        policy: ``"gumbel"`` (Gumbel MuZero) or ``"muzero"`` (PUCT + Dirichlet).
        discount: per-step discount; also the weight of I in veto statistics.
        max_depth: maximum search depth (None: unlimited).
        interior_veto: enforce vetoes below the root.
        veto_penalty: reward of a vetoed transition if ever expanded (backstop).
        max_num_considered_actions: Gumbel: actions sampled at the root.
        gumbel_scale: Gumbel: noise scale (0 for deterministic search).
        dirichlet_fraction: MuZero: root noise fraction.
        dirichlet_alpha: MuZero: root noise concentration.
        pb_c_init: MuZero: PUCT constant c1.
        pb_c_base: MuZero: PUCT constant c2.

    Returns:
        A :class:`SearchOutput` (``[B, A]`` veto mask and value statistics).
    """
    if not models.is_discrete:
        raise ValueError("plan_mcts needs discrete actions; use plan_cem for continuous ones")
    if num_simulations < 1:
        raise ValueError(f"num_simulations must be >= 1, got {num_simulations}")
    check_fallback_action(models, fallback_action)
    num_worlds, batch, num_actions = models.num_worlds, obs.shape[0], models.num_actions

    root, invalid_actions, veto_mask, used_fallback, step_stats = make_search_root(
        models, proposal, proposal_params, obs, discount=discount, fallback_action=fallback_action, veto=veto
    )
    recurrent_fn = make_recurrent_fn(
        models,
        proposal,
        discount=discount,
        fallback_action=fallback_action,
        veto=veto,
        interior_veto=interior_veto,
        veto_penalty=veto_penalty,
    )
    if policy == "muzero":
        policy_output = mctx.muzero_policy(
            proposal_params,
            key,
            root,
            recurrent_fn,
            num_simulations,
            invalid_actions=invalid_actions,
            max_depth=max_depth,
            dirichlet_fraction=dirichlet_fraction,
            dirichlet_alpha=dirichlet_alpha,
            pb_c_init=pb_c_init,
            pb_c_base=pb_c_base,
        )
    elif policy == "gumbel":
        policy_output = mctx.gumbel_muzero_policy(
            proposal_params,
            key,
            root,
            recurrent_fn,
            num_simulations,
            invalid_actions=invalid_actions,
            max_depth=max_depth,
            max_num_considered_actions=max_num_considered_actions,
            gumbel_scale=gumbel_scale,
        )
    else:
        raise ValueError(f'policy must be "gumbel" or "muzero", got {policy!r}')

    tree = policy_output.search_tree
    summary = tree.summary()
    visits = summary.visit_counts  # [S*B, A]
    completed = jnp.where(visits > 0, summary.qvalues, summary.value[:, None])
    world_q = completed.reshape(num_worlds, batch, num_actions)
    world_visits = visits.reshape(num_worlds, batch, num_actions)
    search_stats = ActionStats.from_world_values(
        jnp.moveaxis(world_q, 0, -1), summary.value.reshape(num_worlds, batch).T
    )
    search_stats = checked_stats(search_stats)
    _, score = apply_rule(veto, search_stats)
    never_visited = jnp.sum(world_visits, axis=0) == 0
    index, _ = select_action(score, veto_mask | never_visited)
    action = fallback_where(used_fallback, jnp.maximum(index, 0), fallback_action)
    return SearchOutput(
        action=action,
        veto_mask=veto_mask,
        value_mean=search_stats.mean,
        value_std=search_stats.std,
        score=score,
        used_fallback=used_fallback,
        step_stats=step_stats,
        visit_counts=world_visits,
        world_qvalues=world_q,
        world_actions=policy_output.action.reshape(num_worlds, batch),
        search_tree=tree,
    )
