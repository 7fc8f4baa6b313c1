"""The calibrate step: the veto rule of the spec, its epistemic-std threshold calibrated by split
conformal prediction on the held-out train episodes."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from priorguard.experiments.context import RunContext
from priorguard.experiments.data import Transitions
from priorguard.planners import veto as veto_lib
from priorguard.planners.worlds import PlanningModels


def veto_rule(ctx: RunContext, models: PlanningModels, proposal: Any, params: Any, cal: Transitions,
              key: Any) -> tuple[Any, dict[str, Any] | None]:
    """The run's veto rule and its calibration record (None when no threshold was set).

    Args:
        cal: the held-out train episodes.
        key: consumed by the calibration scores.
    """
    v = ctx.spec.planner.veto
    if not v.enabled:
        return veto_lib.make_veto_rule(kappa=ctx.spec.planner.lcb_kappa)[0], None
    cal_stds = None
    if v.epistemic_std == "auto":
        # Calibrate on the (held-out train state, action) pairs this planner checks in
        # distribution, so the false-veto rate is about them (the driver knows which).
        # "distinct": a state the behaviour policy sat in for 20 steps counts once, as a
        # state the planner passes through does; on coin-shift 404 of 600 held-out steps
        # were the absorbing coin cell, and the threshold vetoed the edge cell's every action.
        states = cal.first_visits() if v.calibrate_on == "distinct" else cal
        cal_stds = ctx.driver.calibration_scores(models, key, jnp.asarray(states.obs, jnp.float64), proposal,
                                                  params)
    rule, threshold = veto_lib.make_veto_rule(
        epistemic_std=v.epistemic_std, value_drop=v.value_drop, kappa=ctx.spec.planner.lcb_kappa,
        alpha=v.alpha, calibration_stds=cal_stds, rules=[(r.name, r.params) for r in v.rules or ()])
    record = None
    if threshold is not None:
        record = {**threshold.to_dict(), "method": "split-conformal", "calibrate_on": v.calibrate_on}
    elif isinstance(v.epistemic_std, float | int):
        record = {"threshold": float(v.epistemic_std), "alpha": None, "n": 0, "method": "fixed"}
    return rule, record
