"""A veto rule registered from outside the package is built by name and vetoes what it should.

The rule below lives in this test module, not in ``priorguard.planners``: it is
registered with :func:`register_veto_rule` and built by :func:`make_veto_rule`
from its name and parameters, the way a user module adds a rule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_worlds import linear_draws

from priorguard.planners import (
    ActionStats,
    Chain,
    EpistemicStdVeto,
    LowerConfidenceBound,
    PlanningModels,
    UniformProposal,
    ValueDropVeto,
    VetoRule,
    apply_rule,
    disarmed,
    make_veto_rule,
    plan_mcts,
    plan_one_step,
    register_veto_rule,
    veto_rule_names,
)

RULE = "test_worst_world_floor"


class WorstWorldFloor(VetoRule):
    """Vetoes an action when its value in any world falls below ``floor`` (only ``veto`` is written)."""

    floor: jax.Array

    def veto(self, stats: ActionStats) -> jax.Array:
        return jnp.min(stats.world_values, axis=-1) < self.floor

    def disarmed(self) -> VetoRule:
        return WorstWorldFloor(floor=jnp.full_like(self.floor, -jnp.inf))


@register_veto_rule(RULE)
def worst_world_floor(*, floor: float) -> VetoRule:
    return WorstWorldFloor(floor=jnp.asarray(floor))


def _models(num_worlds=3, num_actions=5, seed=0):
    # delta of the single state column = the action's column of w (per world); T = the state.
    rng = np.random.default_rng(seed)
    w = np.zeros((num_worlds, 1 + num_actions, 1))
    w[:, 1:, 0] = rng.normal(size=num_actions) + 0.5 * rng.normal(size=(num_worlds, num_actions))
    models = PlanningModels(world=linear_draws(w), terminal=linear_draws(np.ones((num_worlds, 1, 1))),
                            terminal_columns=(0,), num_actions=num_actions)
    return models, w[:, 1:, 0]  # [S, A]: the value of action a in world s from state 0


def test_registered_rule_is_listed_and_built_by_name():
    assert RULE in veto_rule_names()
    assert {"epistemic_std", "value_drop", "lcb"} <= set(veto_rule_names())
    rule, record = make_veto_rule(rules=[(RULE, {"floor": 0.25})])
    assert record is None
    assert isinstance(rule, Chain) and len(rule.rules) == 1 and isinstance(rule.rules[0], WorstWorldFloor)
    assert float(rule.rules[0].floor) == 0.25


def test_registered_rule_vetoes_exactly_the_actions_below_the_floor():
    stats = ActionStats.from_world_values(jnp.array([[[1.0, 2.0], [-1.0, 5.0], [0.5, 0.5]]]),
                                          jnp.array([[0.0, 0.0]]))
    rule, _ = make_veto_rule(rules=[(RULE, {"floor": 0.0})])
    veto, score = apply_rule(rule, stats)
    assert veto.tolist() == [[False, True, False]]
    np.testing.assert_array_equal(score, stats.mean)  # the default score() keeps the score
    veto, _ = apply_rule(disarmed(rule), stats)
    assert not veto.any()


def test_registered_rule_follows_the_built_in_rules_in_the_chain():
    rule, _ = make_veto_rule(epistemic_std=1.0, value_drop=0.5, kappa=2.0, rules=[(RULE, {"floor": 0.0})])
    assert [type(r) for r in rule.rules] == [EpistemicStdVeto, ValueDropVeto, LowerConfidenceBound,
                                             WorstWorldFloor]
    # the built-ins alone build the same structure as before the registry
    builtin, _ = make_veto_rule(epistemic_std=1.0, value_drop=0.5, kappa=2.0)
    assert [type(r) for r in builtin.rules] == [EpistemicStdVeto, ValueDropVeto, LowerConfidenceBound]


@jax.jit
def _plan(key, floor, fallback):
    models, _ = _models()
    rule, _ = make_veto_rule(kappa=0.5, rules=[(RULE, {"floor": floor})])
    return plan_one_step(models, UniformProposal(5), None, key, jnp.zeros((2, 1)), num_candidates=5,
                         fallback_action=fallback, veto=rule)


@settings(max_examples=40, deadline=None)
@given(st.floats(-3.0, 3.0), st.integers(0, 2**31 - 1), st.integers(0, 4))
def test_one_step_planner_never_chooses_an_action_the_registered_rule_vetoes(floor, seed, fallback):
    _, values = _models()
    vetoed = values.min(axis=0) < floor  # [A]: what the rule must veto
    out = _plan(jax.random.key(seed), jnp.asarray(floor), jnp.asarray(fallback))
    np.testing.assert_array_equal(np.asarray(out.veto_mask), vetoed[np.asarray(out.candidate_actions)])
    for b in range(2):
        if vetoed.all():
            assert bool(out.used_fallback[b]) and int(out.action[b]) == fallback
        else:
            assert not bool(out.used_fallback[b]) and not vetoed[int(out.action[b])]


def test_mcts_never_chooses_an_action_the_registered_rule_vetoes():
    models, values = _models()
    floor = float(np.sort(values.min(axis=0))[2])  # the two worst actions are vetoed, three are not
    vetoed = values.min(axis=0) < floor
    assert vetoed.sum() == 2
    rule, _ = make_veto_rule(rules=[(RULE, {"floor": floor})])
    out = plan_mcts(models, UniformProposal(5), None, jax.random.key(0), jnp.zeros((4, 1)), num_simulations=8,
                    fallback_action=0, veto=rule, max_depth=2)
    assert out.veto_mask.tolist() == [vetoed.tolist()] * 4
    assert not vetoed[np.asarray(out.action)].any()
    assert not np.asarray(out.used_fallback).any()


def test_registry_rejects_unknown_names_clashes_and_non_rules():
    with pytest.raises(ValueError, match="unknown veto rule 'no_such_rule'"):
        make_veto_rule(rules=[("no_such_rule", {})])
    register_veto_rule(RULE, worst_world_floor)  # the same factory again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_veto_rule(RULE, lambda floor: WorstWorldFloor(floor=jnp.asarray(floor)))
    with pytest.raises(ValueError, match="already registered"):
        register_veto_rule("lcb", lambda kappa: None)
    register_veto_rule("test_not_a_rule", lambda: "not a rule")
    with pytest.raises(TypeError, match="not a VetoRule"):
        make_veto_rule(rules=[("test_not_a_rule", {})])
    with pytest.raises(TypeError):
        make_veto_rule(rules=[(RULE, {"floor": 0.0, "unexpected": 1})])
