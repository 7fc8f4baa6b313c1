"""Policies the audits run: A alone, the planner, and the state samplers they start from.

A policy is ``(key, obs[N, Ds]) -> actions`` (:data:`Policy`); the
differentiable policies of :func:`priorguard.planners.adversarial.adversarial_search`
are ``obs[R, Ds] -> probs[R, A]`` or ``-> actions[R, Da]``. The callables are
equinox modules, not closures, so jitted audits that take them as arguments
compile once per structure and shapes, not once per run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "ConstantAction",
    "EmpiricalStateSampler",
    "ObservedStateSampler",
    "Policy",
    "ProposalPolicy",
    "ProposalProbs",
    "planner_policy",
    "proposal_policy",
]

#: ``(key, obs [N, Ds]) -> actions [N]`` (discrete) or ``[N, Da]`` (continuous).
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


class EmpiricalStateSampler(eqx.Module):
    """``key -> obs[F]``: a row drawn uniformly from observed states ``[M, F]`` (float64).

    For audits of an environment with no model to sample states from: its states are
    the ones the agent and the reference policies met.
    """

    states: Array

    def __call__(self, key: PRNGKeyArray) -> Array:
        return self.states[jax.random.randint(key, (), 0, self.states.shape[0])]


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
