"""CEM / MPC for continuous actions, with PETS-style trajectory sampling over worlds.

Every candidate action sequence is rolled out in every world (world s uses
draw s of W, T and I from start to end), giving per-world returns
``sum_t discount^t T(s_{t+1}) + discount^H I(s_H)``; the scoring rule (e.g.
LCB) is applied to their mean and spread across worlds. Vetoes use the
one-step statistics of the sequence's *first* action (the one MPC executes),
the same statistics as :func:`plan_one_step`, so a calibrated threshold means
the same thing in every planner. Vetoed sequences never become elites.

The plan returned is the mean of the final elite set (not its best sample),
clipped to the action bounds; it is checked by the veto rule itself, and the
fallback action is returned (and reported) when it is vetoed or when no
sequence of the final population was admissible.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from priorguard.planners.base import ActionStats, CEMOutput
from priorguard.planners.veto import VetoRule, fallback_where, identity
from priorguard.planners.worlds import PlanningModels, action_stats, check_fallback_action, checked_stats

__all__ = ["plan_cem", "sequence_returns"]


def sequence_returns(
    models: PlanningModels,
    obs: Float[Array, "B Ds"],
    sequences: Float[Array, "B K H Da"],
    *,
    discount: float,
) -> Float[Array, "B K S"]:
    """Per-world returns of K action sequences from each of B states (PETS).

    Args:
        models: planning models (continuous actions, S worlds).
        obs: ``[B, Ds]`` start observations.
        sequences: ``[B, K, H, Da]`` action sequences.
        discount: per-step discount.

    Returns:
        ``[B, K, S]`` returns ``sum_t discount^t c_t T_s(s_{t+1}) + discount^H c_H I_s(s_H)``,
        where ``c_t`` is the probability under world s's D that the episode is still on
        before step t (1 without D).
    """
    batch, k, horizon = sequences.shape[:3]
    num_worlds = models.num_worlds
    start = jnp.broadcast_to(jnp.repeat(obs, k, axis=0)[None], (num_worlds, batch * k, obs.shape[-1]))
    actions = jnp.moveaxis(sequences.reshape(batch * k, horizon, -1), 1, 0)  # [H, B*K, Da]

    def step(carry: tuple[Array, Array], action: Array) -> tuple[tuple[Array, Array], Array]:
        state, alive = carry
        next_state = models.next_state_per_world(state, action)  # [S, B*K, Ds]
        reward = alive * models.terminal_value_per_world(next_state)
        return (next_state, alive * models.continuation_per_world(next_state)), reward

    alive0 = jnp.ones(start.shape[:-1], start.dtype)
    (last, alive), rewards = jax.lax.scan(step, (start, alive0), actions)  # rewards [H, S, B*K]
    weights = discount ** jnp.arange(horizon, dtype=rewards.dtype)
    returns = jnp.tensordot(weights, rewards, axes=1)  # [S, B*K]
    returns = returns + discount**horizon * alive * models.instrumental_value_per_world(last)
    return jnp.moveaxis(returns.reshape(num_worlds, batch, k), 0, -1)


def _evaluate(
    models: PlanningModels, obs: Array, sequences: Array, rule: VetoRule, discount: float
) -> tuple[ActionStats, Bool[Array, "B K"], Float[Array, "B K"]]:
    """Return statistics, first-action vetoes and scores of ``[B, K, H, Da]`` sequences."""
    step_stats = checked_stats(action_stats(models, obs, sequences[:, :, 0], discount=discount))
    veto_mask = rule.veto(step_stats)
    current = jnp.broadcast_to(step_stats.current_value[:, None], (obs.shape[0], models.num_worlds))
    return_stats = checked_stats(
        ActionStats.from_world_values(sequence_returns(models, obs, sequences, discount=discount), current)
    )
    score = rule.score(return_stats, return_stats.mean)
    return return_stats, veto_mask, score


def plan_cem(
    models: PlanningModels,
    key: PRNGKeyArray,
    obs: Float[Array, "B Ds"],
    *,
    horizon: int,
    fallback_action: Any,
    veto: VetoRule | None = None,
    num_samples: int = 64,
    num_elites: int = 8,
    num_iterations: int = 5,
    discount: float = 0.99,
    initial_mean: Float[Array, "B H Da"] | None = None,
    initial_std: float | Float[Array, " Da"] | None = None,
    min_std: float = 1e-3,
    momentum: float = 0.0,
) -> CEMOutput:
    """Cross-entropy-method MPC with vetoes over S worlds.

    B states, K = ``num_samples`` sequences of H = ``horizon`` actions of size
    Da per iteration. Each iteration samples sequences from a diagonal Gaussian
    (clipped to the bounds), evaluates them in every world, keeps the
    ``num_elites`` best-scoring non-vetoed ones and refits the Gaussian to
    them. The returned plan is the final elite mean, clipped.

    Args:
        models: planning models (continuous actions).
        key: consumed (one subkey per iteration).
        obs: ``[B, Ds]`` observations.
        horizon: H.
        fallback_action: ``[Da]`` declared fallback action.
        veto: veto/scoring rule or None.
        num_samples: K, sequences per iteration.
        num_elites: elites per iteration (<= K).
        num_iterations: CEM iterations (>= 1).
        discount: per-step discount; also the weight of I in veto statistics.
        initial_mean: ``[B, H, Da]`` warm start (e.g. the shifted previous
            plan); default the middle of the bounds.
        initial_std: initial std, default half the bounds' width.
        min_std: floor of the sampling std.
        momentum: weight of the previous Gaussian in each refit (0: plain CEM).

    Returns:
        A :class:`CEMOutput`.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from priorguard.models.base import FunctionDraws
        >>> from priorguard.planners import PlanningModels
        >>> models = PlanningModels(
        ...     world=FunctionDraws({"w": jnp.zeros((2, 1))}, lambda p, x: x[:, 1:] + p["w"]),
        ...     terminal=FunctionDraws({"c": jnp.ones((2, 1))}, lambda p, x: -(x - p["c"]) ** 2),
        ...     terminal_columns=(0,), action_low=-jnp.ones(1) * 2, action_high=jnp.ones(1) * 2)
        >>> out = eqx.filter_jit(plan_cem)(models, jax.random.key(0), jnp.zeros((1, 1)), horizon=1,
        ...                                fallback_action=jnp.zeros(1), num_iterations=6)
        >>> round(float(out.action[0, 0]), 1)
        1.0
    """
    if models.is_discrete:
        raise ValueError("plan_cem needs continuous actions; use plan_one_step or plan_mcts for discrete ones")
    if not 1 <= num_elites <= num_samples:
        raise ValueError(f"need 1 <= num_elites <= num_samples, got {num_elites} and {num_samples}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    check_fallback_action(models, fallback_action)
    rule = identity() if veto is None else veto
    low, high = models.action_low, models.action_high
    batch = obs.shape[0]
    shape = (batch, horizon) + jnp.shape(low)
    mean = jnp.broadcast_to((low + high) / 2, shape) if initial_mean is None else jnp.asarray(initial_mean)
    std0 = (high - low) / 2 if initial_std is None else initial_std
    std = jnp.broadcast_to(jnp.asarray(std0, dtype=mean.dtype), shape)
    mean = mean.astype(obs.dtype)
    std = std.astype(obs.dtype)

    def sample(iteration_key: PRNGKeyArray, mean: Array, std: Array) -> Array:
        noise = jax.random.normal(iteration_key, (batch, num_samples) + shape[1:], dtype=mean.dtype)
        return models.clip_action(mean[:, None] + std[:, None] * noise)  # [B, K, H, Da]

    def elites_of(score: Array, veto_mask: Array) -> tuple[Array, Array]:
        rank = jnp.where(veto_mask | jnp.isnan(score), -jnp.inf, score)
        top_score, top_index = jax.lax.top_k(rank, num_elites)  # [B, E]
        weights = jnp.isfinite(top_score)  # vetoed sequences never become elites
        elite_mask = jnp.zeros(score.shape, bool).at[jnp.arange(batch)[:, None], top_index].set(weights)
        return elite_mask, jnp.any(weights, axis=-1)

    def refit(population: Array, elite_mask: Array, mean: Array, std: Array) -> tuple[Array, Array, Array]:
        w = elite_mask.astype(population.dtype)[..., None, None]  # [B, K, 1, 1]
        count = jnp.maximum(jnp.sum(w, axis=1), 1.0)
        elite_mean = jnp.sum(w * population, axis=1) / count
        elite_var = jnp.sum(w * (population - elite_mean[:, None]) ** 2, axis=1) / count
        has_elites = jnp.any(elite_mask, axis=1)[:, None, None]
        elite_mean = jnp.where(has_elites, elite_mean, mean)
        elite_std = jnp.where(has_elites, jnp.sqrt(elite_var), std)
        new_mean = momentum * mean + (1 - momentum) * elite_mean
        new_std = jnp.maximum(momentum * std + (1 - momentum) * elite_std, min_std)
        return elite_mean, new_mean, new_std

    iteration_keys = jax.random.split(key, num_iterations)

    def iteration(carry: tuple[Array, Array], iteration_key: PRNGKeyArray) -> tuple[tuple[Array, Array], None]:
        mean, std = carry
        population = sample(iteration_key, mean, std)
        _, veto_mask, score = _evaluate(models, obs, population, rule, discount)
        elite_mask, _ = elites_of(score, veto_mask)
        _, mean, std = refit(population, elite_mask, mean, std)
        return (mean, std), None

    (mean, std), _ = jax.lax.scan(iteration, (mean, std), iteration_keys[:-1])
    population = sample(iteration_keys[-1], mean, std)
    return_stats, veto_mask, score = _evaluate(models, obs, population, rule, discount)
    elite_mask, any_admissible = elites_of(score, veto_mask)
    elite_mean, _, _ = refit(population, elite_mask, mean, std)
    plan = models.clip_action(elite_mean)  # [B, H, Da]

    plan_stats, plan_veto, _ = _evaluate(models, obs, plan[:, None], rule, discount)
    plan_vetoed = plan_veto[:, 0]
    used_fallback = plan_vetoed | ~any_admissible
    action = fallback_where(used_fallback, plan[:, 0], fallback_action)
    return CEMOutput(
        action=action,
        plan=plan,
        plan_value_mean=plan_stats.mean[:, 0],
        plan_value_std=plan_stats.std[:, 0],
        plan_vetoed=plan_vetoed,
        population=population,
        elite_mask=elite_mask,
        veto_mask=veto_mask,
        value_mean=return_stats.mean,
        value_std=return_stats.std,
        score=score,
        used_fallback=used_fallback,
    )
