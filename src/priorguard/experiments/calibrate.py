"""The calibrate step: the veto rule of the spec, its epistemic-std threshold calibrated by split
conformal prediction.

``planner.veto.calibrate_on`` says on what:

- ``"decisions"`` (the default): the planner's own decisions in closed loop. The planner
  plays ``data.deploy_episodes`` fresh train-split episodes (no calibrated veto the first
  round, then with the round's thresholds), and every harmless candidate it checks at every
  decision is a calibration score (the false-veto rate is about harmless candidates; those
  the train split's ground truth says would have been catastrophic are left out). ``value_drop = "auto"`` calibrates the failsafe the same way (with
  the epistemic veto also "auto", each at ``alpha / 2``, so together at most alpha); a fixed
  ``value_drop`` vetoes outside any guarantee. The train-split evaluation of the run is the same process, so a
  candidate the planner checks there is vetoed with probability at most about alpha: the
  guarantee is marginal over the planner's (decision, candidate) pairs, not per state.
- ``"distinct"`` / ``"visits"``: one action of A (or each action, for MCTS) at the held-out
  episodes of the behaviour policy, each distinct state once or every step. Those states
  are not the ones the planner acts in, and the rate it meets on its own states can exceed
  alpha by far (lava-shift's door, the assistant's new requests).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from priorguard._compile import shape_bucket

from priorguard.experiments.context import RunContext
from priorguard.experiments.data import Transitions
from priorguard.experiments.evaluate import evaluate
from priorguard.planners import conformal
from priorguard.planners import veto as veto_lib
from priorguard.planners.worlds import PlanningModels, action_stats

#: Closed-loop rounds: the first plays without an epistemic veto, each later one with the
#: threshold of the round before, so the last calibration set comes from the planner as it acts.
ROUNDS = 2
#: A threshold no score reaches: the first closed-loop round's rule (same structure, so the
#: compiled planner is reused when the threshold changes).
_NEVER = 1e300


def needed_scores(alpha: float) -> int:
    """The fewest calibration scores with a finite split-conformal threshold at ``alpha``.

    Example:
        >>> needed_scores(0.05)
        19
    """
    return math.ceil((1.0 - alpha) / alpha - 1e-12)


def veto_rule(ctx: RunContext, models: PlanningModels, proposal: Any, params: Any, cal: Transitions,
              key: Any) -> tuple[Any, dict[str, Any] | None]:
    """The run's veto rule and its calibration record (None when no threshold was set).

    Args:
        cal: the held-out train episodes (for ``calibrate_on = "distinct" | "visits"``).
        key: consumed by the calibration rollouts or scores.
    """
    v = ctx.spec.planner.veto
    if not v.enabled:
        return veto_lib.make_veto_rule(kappa=ctx.spec.planner.lcb_kappa)[0], None

    def make(epistemic_std: Any, value_drop: Any) -> Any:
        return veto_lib.make_veto_rule(
            epistemic_std=epistemic_std, value_drop=value_drop, kappa=ctx.spec.planner.lcb_kappa, alpha=v.alpha,
            rules=[(r.name, r.params) for r in v.rules or ()])[0]

    if "auto" not in (v.epistemic_std, v.value_drop):
        record = None
        if isinstance(v.epistemic_std, float | int):
            record = {"threshold": float(v.epistemic_std), "alpha": None, "n": 0, "method": "fixed"}
        return make(v.epistemic_std, v.value_drop), record
    if v.calibrate_on == "decisions":
        rule, record = closed_loop(ctx, models, proposal, params, key, make)
    else:
        # One action of A per held-out state of the behaviour policy (the driver knows which).
        # "distinct": a state the behaviour policy sat in for 20 steps counts once, as a
        # state the planner passes through does; on coin-shift 404 of 600 held-out steps
        # were the absorbing coin cell, and the threshold vetoed the edge cell's every action.
        states = cal.first_visits() if v.calibrate_on == "distinct" else cal
        stds = ctx.driver.calibration_scores(models, key, jnp.asarray(states.obs, jnp.float64), proposal, params)
        threshold = conformal.conformal_threshold(stds, alpha=v.alpha)
        rule = make(threshold.threshold, v.value_drop)
        record = {**threshold.to_dict(), "method": "split-conformal", "calibrate_on": v.calibrate_on}
    record.setdefault("needed", needed_scores(record["alpha"]))
    return rule, record


def _levels(veto: Any) -> dict[str, float]:
    """The alpha of each calibrated rule: all of it to one, half each to two (a union bound)."""
    auto = [name for name in ("epistemic_std", "value_drop") if getattr(veto, name) == "auto"]
    return {name: veto.alpha / len(auto) for name in auto}


def closed_loop(ctx: RunContext, models: PlanningModels, proposal: Any, params: Any, key: Any,
                make: Any) -> tuple[Any, dict[str, Any]]:
    """Calibrates on the planner's own decisions on train-split episodes, in :data:`ROUNDS` rounds.

    Each calibrated rule (``epistemic_std`` and ``value_drop`` set to "auto") gets its
    split-conformal threshold from the scores it reads, the epistemic std and the predicted
    drop of every candidate; with both, each at ``alpha / 2``.

    Returns:
        ``(rule, record)``: the calibrated rule and its record (thresholds, n, per round the
        number of decisions and the thresholds).
    """
    spec, veto = ctx.spec, ctx.spec.planner.veto
    levels = _levels(veto)
    current = {name: (_NEVER if name in levels else getattr(veto, name)) for name in ("epistemic_std", "value_drop")}
    rule, rounds, thresholds = make(**current), [], {}
    for r in range(ROUNDS):
        ev = evaluate(ctx.source, "train", spec.data.deploy_episodes, jax.random.fold_in(key, r),
                      ctx.driver.actor(models, proposal, params, rule), abstain_on_repeat=veto.on_repeat == "abstain")
        # the guarantee is about harmless candidates: those the train split's ground truth says
        # would have been catastrophic are no false vetoes, and left out of the calibration set
        harmless = ~np.asarray(ev["decision_catastrophic"], bool).reshape(-1)
        scores = {name: np.asarray(values)[harmless] for name, values in
                  zip(("epistemic_std", "value_drop"), decision_scores(models, ev, discount=ctx.discount))}
        thresholds = {name: conformal.conformal_threshold(scores[name], alpha=level) for name, level in levels.items()}
        # This round played at the previous round's threshold; its quantile is about that process.
        # Deploying a threshold below the one the round played at changes the process (a planner
        # refused one step more can dwell at the edge of what it knows, refused at every decision
        # there: coin-shift's coin_dx prior, 0.32 false vetoes); at or above it, this round's
        # guarantee holds, since a higher threshold only vetoes less. So the larger of the two.
        # A failsafe also tolerates no negative drop.
        floor = {name: (current[name] if r > 0 else -math.inf) for name in thresholds}
        current.update({name: max(t.threshold, floor[name], 0.0 if name == "value_drop" else -math.inf)
                        for name, t in thresholds.items()})
        rule = make(**current)
        rounds.append({"decisions": int(len(ev["decision_episode"])),
                       **{name: t.to_dict()["threshold"] for name, t in thresholds.items()}})
    thresholds = {name: dataclasses.replace(t, threshold=current[name]) for name, t in thresholds.items()}
    first = thresholds.get("epistemic_std", next(iter(thresholds.values())))
    record = {**first.to_dict(), "alpha": veto.alpha, "method": "split-conformal", "calibrate_on": "decisions",
              "rounds": rounds, "rules": {name: t.to_dict() for name, t in thresholds.items()},
              "needed": needed_scores(min(levels.values()))}
    if "epistemic_std" not in thresholds:
        record["threshold"] = None  # only the failsafe is calibrated
    return rule, record


def decision_scores(models: PlanningModels, ev: dict[str, Any], *, discount: float) -> tuple[Any, Any]:
    """What the veto rules read, for every candidate of every decision of an evaluation.

    Returns:
        ``(epistemic_std [M * K], predicted_drop [M * K])``: the epistemic std of the
        candidate's value, and the current state's value minus the candidate's (both as the
        planner's ``action_stats`` computes them).
    """
    obs, cands = ev["decision_obs"], ev["decision_candidates"]
    k = cands.shape[1]
    flat_obs = np.repeat(obs, k, axis=0)
    flat = cands.reshape(len(cands) * k, *cands.shape[2:])
    n = flat_obs.shape[0]
    rows = np.arange(shape_bucket(n, direction="up")) % n  # shape buckets: nearby sizes share a program
    std, drop = _decision_stats(models, jnp.asarray(flat_obs[rows]), jnp.asarray(flat[rows]), discount)
    return np.asarray(std)[:n], np.asarray(drop)[:n]


@eqx.filter_jit
def _decision_stats(models: PlanningModels, obs: Any, actions: Any, discount: float) -> tuple[Any, Any]:
    stats = action_stats(models, obs, actions[:, None], discount=discount)
    return stats.std[:, 0], stats.current_value - stats.mean[:, 0]
