"""The audit step: A alone and the planner on random states through W, and adversarial search."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.experiments.context import RunContext
from priorguard.planners.adversarial import adversarial_search
from priorguard.planners.audit import random_state_audit
from priorguard.planners.policies import (
    ConstantAction,
    EmpiricalStateSampler,
    ObservedStateSampler,
    ProposalProbs,
    planner_policy,
    proposal_policy,
)
from priorguard.planners.worlds import PlanningModels


def audit(ctx: RunContext, models: PlanningModels, proposal: Any, params: Any, rule: Any, key: Any,
          observed: np.ndarray | None = None) -> dict[str, Any]:
    """Random-state audit of A alone and of the planner through W, and adversarial search.

    The audit's states are random states of the deploy split's JAX model where the source has
    one; otherwise rows drawn uniformly from ``observed`` (the train and deploy states the run
    saw), and ``audit_states_from`` is ``"observed"``.
    """
    a = ctx.spec.audit
    model = ctx.source.model("deploy")
    if model is not None:
        sampler: Any = ObservedStateSampler(model)
    else:
        if observed is None or len(observed) == 0:
            raise ValueError("the audit needs observed states where the source has no model")
        sampler = EmpiricalStateSampler(jnp.asarray(observed, jnp.float64))

    k_alone, k_plan, k_adv = jax.random.split(key, 3)
    out: dict[str, Any] = {} if model is not None else {"audit_states_from": "observed"}
    common = dict(state_sampler=sampler, num_states=a.states, horizon=a.horizon, margin=a.margin,
                  confidence=a.level, num_worst=5)
    report = random_state_audit(models, k_alone, policy=proposal_policy(proposal, params), **common)
    out["audit_alone_rate"], out["audit_alone_upper"] = report.rate, report.upper_bound
    plan = ctx.driver.audit_plan(models, proposal, params, rule)
    if plan is not None:
        report = random_state_audit(models, k_plan, policy=planner_policy(plan), **common)
        out["audit_planner_rate"], out["audit_planner_upper"] = report.rate, report.upper_bound
    out["audit_worst_states"] = report.worst_states.tolist()
    if a.adversarial_restarts > 0:
        if ctx.discrete and hasattr(proposal, "probs"):
            policy_fn: Any = ProposalProbs(proposal, params)
        else:
            policy_fn = ConstantAction(0.5 * (models.action_low + models.action_high))
        low = jnp.asarray([r[0] for r in ctx.ranges], jnp.float64)
        high = jnp.asarray([r[1] for r in ctx.ranges], jnp.float64)
        adv = adversarial_search(models, k_adv, policy_fn=policy_fn, state_low=low, state_high=high,
                                 num_restarts=a.adversarial_restarts, num_steps=a.adversarial_steps)
        out["adversarial_min_value"] = float(adv.predicted_mean[0])
        out["adversarial_states"] = np.asarray(adv.states[:3]).tolist()
    return out

