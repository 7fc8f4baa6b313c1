"""How the runner drives each planner kind: one object per kind.

A planner kind decides three things together, and they have to agree:

- the **actor** ``act(key, obs) -> (action, candidates, veto_mask, used_fallback)``
  the runner steps environments with;
- the in-distribution **(state, action) pairs** its veto checks, on which the
  split-conformal threshold is calibrated (so the false-veto rate is about the
  pairs this planner actually checks);
- the **audit policy**, when the planner is cheap enough to run at every audited
  state (one-step), or None.

`driver_for` picks the driver of a ``PlannerSpec``. The actors call
module-level jitted functions with the models, proposal parameters and veto
rule as *arguments* (not closed over), so a later run with the same shapes
reuses the compiled planner (in this process, and from the persistent
compilation cache in a new one).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from priorguard._compile import checked_jit
from priorguard.planners import conformal
from priorguard.planners.cem import plan_cem
from priorguard.planners.mcts import plan_mcts
from priorguard.planners.one_step import plan_one_step
from priorguard.planners.worlds import PlanningModels

#: ``act(key, obs [B, F]) -> (action [B...], candidates [B, K...], veto_mask [B, K], used_fallback [B])``
Actor = Callable[[Any, Any], tuple[Any, Any, Any, Any]]

__all__ = ["Actor", "CemDriver", "MctsDriver", "OneStepDriver", "PlannerDriver", "alone_actor", "driver_for",
           "planner_kinds", "register_planner"]


class PlannerDriver(abc.ABC):
    """The runner's view of one planner kind (see the module docstring).

    Args:
        spec: the experiment's planner table.
        info: the environment's `EnvInfo`.
        discount: weight of I in ``T + discount * I``.
    """

    kind: str = ""
    #: The action spaces this planner plans in ("discrete", "continuous").
    action_kinds: tuple[str, ...] = ("discrete", "continuous")

    def __init__(self, spec: Any, info: Any, discount: float) -> None:
        self.spec = spec
        self.info = info
        self.discount = discount
        self.discrete = info.action_kind == "discrete"

    @abc.abstractmethod
    def actor(self, models: PlanningModels, proposal: Any, params: Any, rule: Any) -> Actor:
        """The planner with these models, A and veto rule, as an :data:`Actor`."""

    def calibration_scores(self, models: PlanningModels, key: Any, obs: Any, proposal: Any,
                           params: Any) -> Any:
        """Epistemic stds of the pairs this planner checks at held-out train states ``obs``.

        By default one action drawn from A per state: the n scores are then
        exchangeable with a fresh in-distribution check, and the conformal
        false-veto bound holds exactly.
        """
        return conformal.calibration_scores(models, key, obs, discount=self.discount, proposal=proposal,
                                            proposal_params=params)

    def audit_plan(self, models: PlanningModels, proposal: Any, params: Any, rule: Any) -> Callable | None:
        """``plan(key, obs)`` returning a planner output, for the random-state audit; None to skip it."""
        return None

    def checked_actor(self, models: PlanningModels, proposal: Any, params: Any, rule: Any) -> Actor:
        """The "A checked" arm: one draw of A, taken unless the veto refuses it (then the fallback).

        No search: T, I and W only check what A proposes (one step ahead, as the veto of every
        planner kind does), so comparing this arm with the planner's separates what checking
        adds from what searching adds.
        """
        fb = int(self.spec.veto.fallback) if self.discrete else self.fallback_vector()
        discount = self.discount
        return lambda key, obs: _act_one_step(models, proposal, params, rule, key, obs, fb, 1, discount, True)

    def fallback_vector(self) -> Any:
        """The fallback action as a ``[Da]`` vector (continuous actions)."""
        fb = self.spec.veto.fallback
        dim = len(self.info.action_low)
        return jnp.asarray([float(fb)] * dim if isinstance(fb, int) else list(fb), jnp.float64)


class OneStepDriver(PlannerDriver):
    """Scores K proposals of A one step ahead; cheap enough to audit at every random state."""

    kind = "one_step"

    def _fallback(self) -> Any:
        return self.spec.veto.fallback if self.discrete else self.fallback_vector()

    def _replace(self) -> bool:
        return (not self.discrete) or self.spec.proposals > self.info.num_actions

    def actor(self, models: PlanningModels, proposal: Any, params: Any, rule: Any) -> Actor:
        fb, k, replace, discount = self._fallback(), self.spec.proposals, self._replace(), self.discount
        return lambda key, obs: _act_one_step(models, proposal, params, rule, key, obs, fb, k, discount, replace)

    def audit_plan(self, models: PlanningModels, proposal: Any, params: Any, rule: Any) -> Callable | None:
        fb, k, replace, discount = self._fallback(), self.spec.proposals, self._replace(), self.discount

        def plan(key: Any, obs: Any) -> Any:
            return plan_one_step(models, proposal, params, key, obs, num_candidates=k, fallback_action=fb,
                                 veto=rule, discount=discount, replace=replace)

        return plan


class MctsDriver(PlannerDriver):
    """Gumbel/MuZero MCTS over discrete actions; the veto checks *every* action at the root."""

    kind = "mcts"
    action_kinds = ("discrete",)

    def actor(self, models: PlanningModels, proposal: Any, params: Any, rule: Any) -> Actor:
        p = self.spec
        fb, considered, discount = int(p.veto.fallback), min(p.proposals, self.info.num_actions), self.discount
        return lambda key, obs: _act_mcts(models, proposal, params, rule, key, obs, fb, p.simulations, p.policy,
                                          discount, p.depth, considered)

    def calibration_scores(self, models: PlanningModels, key: Any, obs: Any, proposal: Any,
                           params: Any) -> Any:
        """Every action at each held-out state, as the root veto checks them.

        Scores of one state are dependent, so the false-veto rate then holds
        marginally over (state, action) pairs rather than exactly.
        """
        na = self.info.num_actions
        return conformal.calibration_scores(models, key, np.repeat(np.asarray(obs), na, axis=0),
                                            discount=self.discount, actions=np.tile(np.arange(na), obs.shape[0]))


class CemDriver(PlannerDriver):
    """Cross-entropy method over continuous action sequences; the veto checks first actions."""

    kind = "cem"
    action_kinds = ("continuous",)

    def actor(self, models: PlanningModels, proposal: Any, params: Any, rule: Any) -> Actor:
        c, fb, discount = self.spec.cem, self.fallback_vector(), self.discount
        return lambda key, obs: _act_cem(models, rule, key, obs, fb, c.horizon, c.population, c.elites,
                                         c.iterations, discount)


_DRIVERS: dict[str, type[PlannerDriver]] = {d.kind: d for d in (OneStepDriver, MctsDriver, CemDriver)}


def register_planner(driver: type[PlannerDriver]) -> type[PlannerDriver]:
    """Adds a planner kind (a `PlannerDriver` subclass, keyed by its ``kind``), from any module.

    A spec's ``planner.kind`` may then name it; the runner drives it like the built-in kinds.
    Usable as a class decorator.

    Raises:
        ValueError: no ``kind``, or the kind belongs to another driver.
    """
    if not driver.kind:
        raise ValueError(f"{driver.__name__} needs a `kind`")
    if driver.kind in _DRIVERS and _DRIVERS[driver.kind] is not driver:
        raise ValueError(f"planner kind {driver.kind!r} is already registered (by {_DRIVERS[driver.kind].__name__})")
    _DRIVERS[driver.kind] = driver
    return driver


def planner_kinds() -> dict[str, tuple[str, ...]]:
    """Registered planner kinds -> the action spaces each plans in."""
    return {kind: d.action_kinds for kind, d in _DRIVERS.items()}


def driver_for(spec: Any, info: Any, discount: float) -> PlannerDriver:
    """The driver of ``spec.kind`` (the spec has already checked it suits the action space)."""
    return _DRIVERS[spec.kind](spec, info, discount)


def alone_actor(proposal: Any, params: Any) -> Actor:
    """The proposal policy A acting alone: one draw, nothing vetoed."""
    return lambda key, obs: _act_alone(proposal, params, key, obs)


@checked_jit
def _act_one_step(models: PlanningModels, proposal: Any, params: Any, rule: Any, key: Any, obs: Any, fb: Any,
                  num_candidates: int, discount: float, replace: bool) -> tuple[Any, Any, Any, Any]:
    out = plan_one_step(models, proposal, params, key, obs, num_candidates=num_candidates, fallback_action=fb,
                        veto=rule, discount=discount, replace=replace)
    return out.action, out.candidate_actions, out.veto_mask, out.used_fallback


@checked_jit
def _act_mcts(models: PlanningModels, proposal: Any, params: Any, rule: Any, key: Any, obs: Any, fallback: int,
              simulations: int, policy: str, discount: float, depth: int, considered: int) -> tuple[Any, Any, Any, Any]:
    out = plan_mcts(models, proposal, params, key, obs, num_simulations=simulations, fallback_action=fallback,
                    veto=rule, policy=policy, discount=discount, max_depth=depth,
                    max_num_considered_actions=considered)
    cands = jnp.broadcast_to(jnp.arange(models.num_actions), out.veto_mask.shape)
    return out.action, cands, out.veto_mask, out.used_fallback


@checked_jit
def _act_cem(models: PlanningModels, rule: Any, key: Any, obs: Any, fb: Any, horizon: int, population: int,
             elites: int, iterations: int, discount: float) -> tuple[Any, Any, Any, Any]:
    out = plan_cem(models, key, obs, horizon=horizon, fallback_action=fb, veto=rule, num_samples=population,
                   num_elites=elites, num_iterations=iterations, discount=discount)
    return out.action, out.population[:, :, 0, :], out.veto_mask, out.used_fallback


@eqx.filter_jit
def _act_alone(proposal: Any, params: Any, key: Any, obs: Any) -> tuple[Any, Any, Any, Any]:
    a = proposal.sample(params, key, obs, 1)[:, 0]
    cands = a[:, None]
    return a, cands, jnp.zeros(cands.shape[:2], bool), jnp.zeros(obs.shape[0], bool)
