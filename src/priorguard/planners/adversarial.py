"""Adversarial search by the world model: states where the policy's actions score worst.

:func:`adversarial_search` runs projected gradient descent (optax adam) on
states to minimise ``T(W(S, A(S)))`` (or its lower confidence bound across
worlds), from several restarts inside the state bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import checked_jit, fail_if
from priorguard.planners.base import world_std
from priorguard.planners.worlds import PlanningModels

__all__ = ["AdversarialResult", "adversarial_search"]


class AdversarialResult(eqx.Module):
    """States found by :func:`adversarial_search`, best (worst for the agent) first.

    Attributes:
        states: ``[R, Ds]`` one state per restart, ranked by ``objective``.
        objective: ``[R]`` the minimised objective (mean - kappa * std).
        predicted_mean: ``[R]`` mean over worlds of ``T(W(S, A(S)))``.
        predicted_std: ``[R]`` spread over worlds of the same.
        true_values: ``[R]`` ``true_value(states)`` when given, else None.
        initial_states: ``[R, Ds]`` the restarts' starting points (same order).
    """

    states: Float[Array, "R Ds"]
    objective: Float[Array, " R"]
    predicted_mean: Float[Array, " R"]
    predicted_std: Float[Array, " R"]
    true_values: Float[Array, " R"] | None
    initial_states: Float[Array, "R Ds"]


def _policy_value_per_world(
    models: PlanningModels, policy_fn: Callable[[Array], Array], obs: Array, discount: float
) -> Float[Array, "S R"]:
    """Per-world value of the next state under the policy (expected over discrete actions)."""
    if models.is_discrete:
        probs = policy_fn(obs)  # [R, A]
        per_action = []
        for a in range(models.num_actions):
            action = jnp.full(obs.shape[:1], a, dtype=jnp.int32)
            next_obs = models.next_state_all_worlds(obs, action)
            per_action.append(models.state_value_per_world(next_obs, discount=discount))
        return jnp.einsum("asr,ra->sr", jnp.stack(per_action), probs)
    next_obs = models.next_state_all_worlds(obs, models.clip_action(policy_fn(obs)))
    return models.state_value_per_world(next_obs, discount=discount)


def adversarial_search(
    models: PlanningModels,
    key: PRNGKeyArray,
    *,
    policy_fn: Callable[[Array], Array],
    state_low: Float[Array, " Ds"],
    state_high: Float[Array, " Ds"],
    num_restarts: int = 16,
    num_steps: int = 200,
    learning_rate: float = 0.05,
    kappa: float = 0.0,
    discount: float = 0.0,
    true_value: Callable[[Array], Array] | None = None,
) -> AdversarialResult:
    """Finds states where the policy's actions score worst: ``argmin_S T(W(S, A(S)))``.

    Projected gradient descent with optax adam from ``num_restarts`` uniform
    starting points inside ``[state_low, state_high]``; every step is projected
    back into the box, and each restart keeps the best state it visited. The
    objective is ``mean - kappa * std`` over worlds of ``V(s')``, with ``V = T
    + discount * I`` (``discount = 0``: T alone) and ``s' = S + W(S, A(S))``.
    For discrete actions ``policy_fn(obs[R, Ds]) -> probs[R, A]`` and V is
    averaged over actions under those probabilities; for continuous actions
    ``policy_fn(obs) -> actions[R, Da]``. Both must be differentiable in obs.

    Args:
        models: planning models.
        key: consumed by the restarts' starting points.
        policy_fn: A as a differentiable function (see above).
        state_low: ``[Ds]`` lower state bounds.
        state_high: ``[Ds]`` upper state bounds.
        num_restarts: R.
        num_steps: adam steps per restart.
        learning_rate: adam step size.
        kappa: LCB coefficient (0: minimise the mean).
        discount: weight of I.
        true_value: optional ground truth ``states[R, Ds] -> [R]``: the true
            counterpart of the objective at each found state (e.g. the true
            terminal value of the environment's outcome of A's action there).

    Returns:
        An :class:`AdversarialResult`, ranked from the lowest objective.
    """
    return _adversarial_run(models, key, policy_fn, jnp.asarray(state_low), jnp.asarray(state_high), true_value,
                            num_restarts, num_steps, learning_rate, kappa, discount)


@checked_jit
def _adversarial_run(models: PlanningModels, key: PRNGKeyArray, policy_fn: Callable[[Array], Array], low: Array,
                     high: Array, true_value: Callable[[Array], Array] | None, num_restarts: int, num_steps: int,
                     learning_rate: float, kappa: float, discount: float) -> AdversarialResult:
    """The search of :func:`adversarial_search`, jitted at module level with everything as arguments
    (pass modules, not fresh closures, as ``policy_fn`` to reuse the compiled program)."""
    optimizer = optax.adam(learning_rate)

    def objective_terms(obs: Array) -> tuple[Array, Array, Array]:
        values = _policy_value_per_world(models, policy_fn, obs, discount)  # [S, R]
        mean = jnp.mean(values, axis=0)
        std = world_std(values.T)
        return mean - kappa * std, mean, std

    def loss(obs: Array) -> Array:
        return jnp.sum(objective_terms(obs)[0])

    start = jax.random.uniform(key, (num_restarts,) + low.shape, dtype=low.dtype, minval=low, maxval=high)

    def step(carry: tuple[Any, ...], _: None) -> tuple[tuple[Any, ...], None]:
        obs, opt_state, best_obs, best_value = carry
        grads = jax.grad(loss)(obs)
        updates, opt_state = optimizer.update(grads, opt_state, obs)
        obs = jnp.clip(optax.apply_updates(obs, updates), low, high)
        value = objective_terms(obs)[0]
        better = value < best_value
        best_obs = jnp.where(better[:, None], obs, best_obs)
        best_value = jnp.where(better, value, best_value)
        return (obs, opt_state, best_obs, best_value), None

    init = (start, optimizer.init(start), start, objective_terms(start)[0])
    (_, _, best_obs, _), _ = jax.lax.scan(step, init, None, length=num_steps)
    objective, mean, std = objective_terms(best_obs)
    objective = fail_if(objective, ~jnp.all(jnp.isfinite(objective)), "adversarial_search: non-finite objective")
    order = jnp.argsort(objective)
    states = best_obs[order]
    return AdversarialResult(
        states=states,
        objective=objective[order],
        predicted_mean=mean[order],
        predicted_std=std[order],
        true_values=None if true_value is None else true_value(states),
        initial_states=start[order],
    )
