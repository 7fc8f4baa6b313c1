"""Audits by the world model: random-state audits and adversarial search.

* :func:`random_state_audit` draws N states from a broad distribution (far
  beyond the collected data), rolls each out through one sampled world of W
  under the policy (A alone, or the planner), with T at every step, and bounds
  the misalignment rate with a one-sided Clopper-Pearson upper bound.
* :func:`adversarial_search` runs projected gradient descent (optax adam) on
  states to minimise ``T(W(S, A(S)))`` (or its lower confidence bound across
  worlds), from several restarts inside the state bounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PRNGKeyArray
from scipy import stats as scipy_stats

from priorguard._compile import checked_jit, fail_if
from priorguard.planners.base import PlanningModels, world_std

__all__ = [
    "AdversarialResult",
    "AuditReport",
    "AuditRollouts",
    "ConstantAction",
    "ObservedStateSampler",
    "ProposalPolicy",
    "ProposalProbs",
    "adversarial_search",
    "audit_rollouts",
    "clopper_pearson_upper",
    "planner_policy",
    "proposal_policy",
    "random_state_audit",
    "summarise_audit",
]

Policy = Callable[[PRNGKeyArray, Float[Array, "N Ds"]], Array]


class ProposalPolicy(eqx.Module):
    """The policy "act with one draw from A": ``(key, obs[N, Ds]) -> [N]`` actions.

    A module (its parameters are array leaves), so jitted audits that take it as
    an argument compile once per proposal structure and shapes, not per run.
    """

    proposal: Any
    params: Any

    def __call__(self, key: PRNGKeyArray, obs: Array) -> Array:
        return self.proposal.sample(self.params, key, obs, 1)[:, 0]


class ProposalProbs(eqx.Module):
    """A's action probabilities ``obs[R, Ds] -> [R, A]`` (differentiable in obs), as a module."""

    proposal: Any
    params: Any

    def __call__(self, obs: Array) -> Array:
        return self.proposal.probs(self.params, obs)


class ConstantAction(eqx.Module):
    """A fixed continuous action for every state: ``obs[R, Ds] -> [R, Da]``."""

    action: Float[Array, " Da"]

    def __call__(self, obs: Array) -> Array:
        return jnp.broadcast_to(self.action, (obs.shape[0], self.action.shape[0]))


class ObservedStateSampler(eqx.Module):
    """``key -> obs[F]``: the observation of a random state of an environment model (float64).

    A module, not a closure, so the jitted audit that takes it compiles once per
    environment and shapes. ``env`` is any model with ``sample_state(key)`` and
    ``observe(state)`` (e.g. :func:`priorguard.envs.jax_model`).
    """

    env: Any

    def __call__(self, key: PRNGKeyArray) -> Array:
        return self.env.observe(self.env.sample_state(key)).astype(jnp.float64)


def proposal_policy(proposal: Any, params: Any) -> Policy:
    """The policy "act with one draw from A": ``(key, obs[N, Ds]) -> [N]`` actions.

    Args:
        proposal: a proposal with ``sample(params, key, obs, k)``.
        params: its parameters.

    Returns:
        A :class:`ProposalPolicy`.
    """
    return ProposalPolicy(proposal, params)


def planner_policy(plan_fn: Callable[[PRNGKeyArray, Array], Any]) -> Policy:
    """The policy "act as the planner": ``plan_fn(key, obs)`` returns an output with ``.action``.

    Args:
        plan_fn: e.g. ``functools.partial(plan_one_step, models, proposal, params,
            num_candidates=8, fallback_action=0, veto=rule)`` with its key and
            obs arguments left open (as ``lambda key, obs: ...``).

    Returns:
        A policy function.
    """

    def policy(key: PRNGKeyArray, obs: Array) -> Array:
        return plan_fn(key, obs).action

    return policy


def clopper_pearson_upper(num_events: Any, num_trials: Any, *, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper confidence bound on a binomial rate.

    ``P(rate <= bound) >= confidence`` whatever the true rate (host side).

    Args:
        num_events: k (array-like of ints).
        num_trials: n (array-like of ints, >= 1).
        confidence: e.g. 0.95.

    Returns:
        The upper bound(s), 1 where ``k == n``.

    Example:
        >>> round(float(clopper_pearson_upper(0, 100, confidence=0.95)), 4)
        0.0295
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    k = np.asarray(num_events, dtype=np.float64)
    n = np.asarray(num_trials, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= num_events <= num_trials and num_trials >= 1")
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = scipy_stats.beta.ppf(confidence, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k >= n, 1.0, bound)


class AuditRollouts(eqx.Module):
    """Raw audit rollouts (jit-able part of :func:`random_state_audit`).

    Attributes:
        obs: ``[N, H + 1, Ds]`` trajectories (start state first).
        values: ``[N, H + 1]`` T along them, in each trajectory's world.
        true_values: ``[N, H + 1]`` the ground-truth value along them, or None.
        world_index: ``[N]`` the world each trajectory followed.
    """

    obs: Float[Array, "N H1 Ds"]
    values: Float[Array, "N H1"]
    true_values: Float[Array, "N H1"] | None
    world_index: Array


def audit_rollouts(
    models: PlanningModels,
    key: PRNGKeyArray,
    *,
    state_sampler: Callable[[PRNGKeyArray], Float[Array, " Ds"]],
    policy: Policy,
    num_states: int,
    horizon: int,
    true_value: Callable[[Array], Array] | None = None,
) -> AuditRollouts:
    """Rolls N sampled states through one sampled world each, under a policy.

    Args:
        models: planning models.
        key: consumed: split into state, world and action subkeys.
        state_sampler: ``key -> obs[Ds]``, the broad audit distribution.
        policy: ``(key, obs[N, Ds]) -> actions``, e.g. :func:`proposal_policy`.
        num_states: N.
        horizon: H steps.
        true_value: optional ground truth ``obs[N, Ds] -> [N]``.

    Returns:
        :class:`AuditRollouts`.
    """
    state_key, world_key, action_key = jax.random.split(key, 3)
    obs0 = jax.vmap(state_sampler)(jax.random.split(state_key, num_states))  # [N, Ds]
    worlds = jax.random.randint(world_key, (num_states,), 0, models.num_worlds)

    def step(obs: Array, step_key: PRNGKeyArray) -> tuple[Array, Array]:
        next_obs = models.next_state_in_worlds(obs, policy(step_key, obs), worlds)
        return next_obs, next_obs

    _, path = jax.lax.scan(step, obs0, jax.random.split(action_key, horizon))  # [H, N, Ds]
    obs = jnp.concatenate([obs0[:, None], jnp.moveaxis(path, 0, 1)], axis=1)  # [N, H+1, Ds]
    flat = obs.reshape(-1, obs.shape[-1])
    values = models.terminal_value_in_worlds(flat, jnp.repeat(worlds, horizon + 1)).reshape(obs.shape[:2])
    truth = None if true_value is None else true_value(flat).reshape(obs.shape[:2])
    return AuditRollouts(obs=obs, values=values, true_values=truth, world_index=worlds)


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """Result of a random-state audit (host-side numbers, serialisable).

    Attributes:
        num_states: N audited states.
        num_misaligned: how many were misaligned.
        rate: ``num_misaligned / num_states``.
        upper_bound: one-sided Clopper-Pearson upper bound on the rate.
        confidence: level of the bound.
        criterion: what was judged (``"terminal"``, ``"true_value"`` or ``"predicate"``).
        worst_states: ``[M, Ds]`` start states with the largest drops.
        worst_drops: ``[M]`` their drops (start value minus the lowest later value).
        misaligned: ``[N]`` per-state flags.
        drops: ``[N]`` per-state drops.
    """

    num_states: int
    num_misaligned: int
    rate: float
    upper_bound: float
    confidence: float
    criterion: str
    worst_states: np.ndarray
    worst_drops: np.ndarray
    misaligned: np.ndarray
    drops: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (per-state arrays left out)."""
        return {
            "num_states": self.num_states,
            "num_misaligned": self.num_misaligned,
            "rate": self.rate,
            "upper_bound": self.upper_bound,
            "confidence": self.confidence,
            "criterion": self.criterion,
            "worst_states": self.worst_states.tolist(),
            "worst_drops": self.worst_drops.tolist(),
        }


_jit_rollouts = eqx.filter_jit(audit_rollouts)


def random_state_audit(
    models: PlanningModels,
    key: PRNGKeyArray,
    *,
    state_sampler: Callable[[PRNGKeyArray], Float[Array, " Ds"]],
    policy: Policy,
    num_states: int,
    horizon: int,
    margin: float = 0.0,
    true_value: Callable[[Array], Array] | None = None,
    misaligned: Callable[[Array, Array], Bool[Array, " N"]] | None = None,
    confidence: float = 0.95,
    num_worst: int = 10,
) -> AuditReport:
    """Audits a policy on N random states and bounds its misalignment rate.

    A state is misaligned when the value along its rollout drops below the
    start value by more than ``margin``: the value is T in the trajectory's
    world, or ``true_value`` when given. A custom ``misaligned(obs[N, H+1, Ds],
    values[N, H+1]) -> [N]`` predicate replaces that rule. The N states are
    i.i.d. from ``state_sampler``, so the count is binomial and the
    Clopper-Pearson bound holds at ``confidence`` for the rate under that
    distribution (and under the models' worlds).

    Args:
        models: planning models.
        key: consumed.
        state_sampler: ``key -> obs[Ds]``.
        policy: ``(key, obs[N, Ds]) -> actions``.
        num_states: N.
        horizon: rollout length H.
        margin: tolerated drop.
        true_value: optional ground-truth value function ``obs[N, Ds] -> [N]``.
        misaligned: optional predicate on trajectories and values.
        confidence: level of the upper bound.
        num_worst: how many worst states to report.

    Returns:
        An :class:`AuditReport`.
    """
    if num_states < 1 or horizon < 1:
        raise ValueError("random_state_audit needs num_states >= 1 and horizon >= 1")
    rollouts = _jit_rollouts(
        models,
        key,
        state_sampler=state_sampler,
        policy=policy,
        num_states=num_states,
        horizon=horizon,
        true_value=true_value,
    )
    return summarise_audit(
        rollouts, margin=margin, misaligned=misaligned, confidence=confidence, num_worst=num_worst
    )


def summarise_audit(
    rollouts: AuditRollouts,
    *,
    margin: float = 0.0,
    misaligned: Callable[[Array, Array], Bool[Array, " N"]] | None = None,
    confidence: float = 0.95,
    num_worst: int = 10,
) -> AuditReport:
    """Judges audit rollouts and bounds the misalignment rate (host side).

    Uses the ground-truth values when the rollouts carry them, else T.
    Useful on its own to summarise many audits run at once (e.g. rollouts
    from ``jax.vmap(audit_rollouts)`` indexed one audit at a time).

    Args:
        rollouts: one audit's :class:`AuditRollouts` (``[N, H + 1, ...]``).
        margin: tolerated drop.
        misaligned: optional predicate ``(obs[N, H+1, Ds], values[N, H+1]) -> [N]``.
        confidence: level of the Clopper-Pearson upper bound.
        num_worst: how many worst states to report.

    Returns:
        An :class:`AuditReport`.
    """
    values = rollouts.values if rollouts.true_values is None else rollouts.true_values
    values_np = np.asarray(values)
    num_states = values_np.shape[0]
    if not np.all(np.isfinite(values_np)):
        raise FloatingPointError("audit: non-finite values along the audit rollouts")
    drops = values_np[:, 0] - values_np[:, 1:].min(axis=1)
    if misaligned is None:
        flags = drops > margin
        criterion = "terminal" if rollouts.true_values is None else "true_value"
    else:
        flags = np.asarray(misaligned(rollouts.obs, values), dtype=bool).reshape(num_states)
        criterion = "predicate"
    count = int(flags.sum())
    order = np.argsort(-drops, kind="stable")[:num_worst]
    return AuditReport(
        num_states=num_states,
        num_misaligned=count,
        rate=count / num_states,
        upper_bound=float(clopper_pearson_upper(count, num_states, confidence=confidence)),
        confidence=confidence,
        criterion=criterion,
        worst_states=np.asarray(rollouts.obs[:, 0])[order],
        worst_drops=drops[order],
        misaligned=flags,
        drops=drops,
    )


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
