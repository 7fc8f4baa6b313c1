"""Veto/scoring rules, action selection and split-conformal calibration."""

import json
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_worlds import linear_draws

from priorguard.planners.conformal import TIE_MARGIN
from priorguard.planners import (
    ActionStats,
    ConformalThreshold,
    PlanningModels,
    UniformProposal,
    action_stats,
    apply_rule,
    calibration_scores,
    chain,
    conformal_threshold,
    disarmed,
    epistemic_std_veto,
    lower_confidence_bound,
    make_veto_rule,
    mask_rule,
    plan_one_step,
    select_action,
    value_drop_veto,
)

# no subnormals: XLA on the CPU flushes them to zero, so inside jit a subnormal ties with 0.0
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False, width=64)


@st.composite
def scores_and_masks(draw):
    batch = draw(st.sampled_from([1, 3]))  # few shapes: each one compiles once
    k = draw(st.sampled_from([1, 2, 6]))
    elements = st.one_of(finite, st.just(-np.inf), st.just(np.inf), st.just(np.nan))
    score = draw(hnp.arrays(np.float64, (batch, k), elements=elements))
    mask = draw(hnp.arrays(np.bool_, (batch, k)))
    return score, mask


_select = jax.jit(select_action)


@settings(max_examples=200, deadline=None)
@given(scores_and_masks())
def test_vetoed_action_never_selected_and_all_vetoed_falls_back(data):
    score, mask = data
    index, used_fallback = _select(jnp.asarray(score), jnp.asarray(mask))
    index, used_fallback = np.asarray(index), np.asarray(used_fallback)
    for b in range(score.shape[0]):
        if mask[b].all():
            assert used_fallback[b] and index[b] == -1
        else:
            assert not used_fallback[b]
            assert 0 <= index[b] < score.shape[1]
            assert not mask[b, index[b]]
            admissible = np.where(mask[b] | np.isnan(score[b]), -np.inf, score[b])
            if np.isfinite(admissible).any() or np.isposinf(admissible).any():
                assert admissible[index[b]] == admissible.max()


def _fixed_models(num_worlds=3, num_actions=5):
    # delta of the single state column = the action's column of w; T = that column.
    rng = np.random.default_rng(0)
    w = np.zeros((num_worlds, 1 + num_actions, 1))
    w[:, 1:, 0] = rng.normal(size=num_actions) + 0.1 * rng.normal(size=(num_worlds, num_actions))
    return PlanningModels(
        world=linear_draws(w), terminal=linear_draws(np.ones((num_worlds, 1, 1))), terminal_columns=(0,),
        num_actions=num_actions,
    )


@jax.jit
def _plan_with_mask(key, mask, fallback):
    rule = chain(mask_rule(lambda stats: mask), lower_confidence_bound(0.5))
    return plan_one_step(
        _fixed_models(), UniformProposal(5), None, key, jnp.zeros((2, 1)),
        num_candidates=5, fallback_action=fallback, veto=rule,
    )


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.bool_, (2, 5)), st.integers(0, 2**31 - 1), st.integers(0, 4))
def test_one_step_planner_never_returns_a_vetoed_candidate(mask, seed, fallback):
    out = _plan_with_mask(jax.random.key(seed), jnp.asarray(mask), jnp.asarray(fallback))
    for b in range(2):
        if mask[b].all():
            assert bool(out.used_fallback[b]) and int(out.action[b]) == fallback
        else:
            i = int(out.candidate_index[b])
            assert not mask[b, i] and int(out.action[b]) == int(out.candidate_actions[b, i])
            assert not bool(out.used_fallback[b])


def _stats(world_values, current):
    return ActionStats.from_world_values(jnp.asarray(world_values, float), jnp.asarray(current, float))


def test_rules_compose_like_optax_chain():
    # Two actions, two worlds: action 0 has mean 1, std 1; action 1 has mean 0.5, std 0.
    stats = _stats([[[0.0, 2.0], [0.5, 0.5]]], [[1.0, 1.0]])
    veto, score = apply_rule(chain(lower_confidence_bound(0.25), lower_confidence_bound(0.25)), stats)
    np.testing.assert_allclose(score, [[0.5, 0.5]])
    assert not veto.any()
    veto, _ = apply_rule(chain(epistemic_std_veto(0.5), value_drop_veto(0.25)), stats)
    assert veto.tolist() == [[True, True]]  # std veto on action 0, failsafe on action 1 (drop 0.5)
    veto, _ = apply_rule(value_drop_veto(0.6), stats)
    assert veto.tolist() == [[False, False]]
    veto, score = apply_rule(None, stats)
    np.testing.assert_allclose(score, stats.mean)
    assert not veto.any()
    with pytest.raises(ValueError):
        value_drop_veto(-1.0)


def test_make_veto_rule_auto_returns_a_serialisable_record():
    rule, record = make_veto_rule(epistemic_std="auto", value_drop=1.0, kappa=2.0, alpha=0.2,
                                  calibration_stds=np.arange(1.0, 11.0))
    # ceil(11 * 0.8) = 9th score, and TIE_MARGIN above it
    assert record == ConformalThreshold(threshold=9.0 * (1 + TIE_MARGIN), alpha=0.2, n=10)
    assert ConformalThreshold.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    stats = _stats([[[9.0, 9.0], [0.0, 20.0], [0.0, 0.0]]], [[0.0, 0.0]])
    veto, score = apply_rule(rule, stats)
    assert veto.tolist() == [[False, True, False]]  # only std 10 > 9; no mean below 0 - 1
    np.testing.assert_allclose(score, [[9.0, 10.0 - 20.0, 0.0]])
    with pytest.raises(ValueError, match="calibration_stds"):
        make_veto_rule(epistemic_std="auto")
    with pytest.raises(ValueError):
        make_veto_rule(epistemic_std="sometimes")


def test_disarmed_rule_vetoes_nothing_scores_the_same_and_reuses_the_program():
    rule, _ = make_veto_rule(epistemic_std=0.5, value_drop=1.0, kappa=2.0)
    off = disarmed(rule)
    stats = _stats([[[9.0, 9.0], [0.0, 20.0], [-5.0, -5.0]]], [[0.0, 0.0]])
    veto_on, score_on = apply_rule(rule, stats)
    veto_off, score_off = apply_rule(off, stats)
    assert veto_on.tolist() == [[False, True, True]]  # std 10 > 0.5; mean -5 < 0 - 1
    assert veto_off.tolist() == [[False, False, False]]
    np.testing.assert_array_equal(score_off, score_on)  # LCB kept: the ablation changes vetoes only
    assert jax.tree_util.tree_structure(off) == jax.tree_util.tree_structure(rule)
    assert bool(rule.can_veto()) and not bool(off.can_veto())  # MCTS skips interior stats on False
    assert not bool(make_veto_rule(kappa=1.0)[0].can_veto())
    assert bool(make_veto_rule(value_drop=0.5)[0].can_veto()) and bool(chain(mask_rule(jnp.isnan)).can_veto())
    traces = []

    @jax.jit
    def plan(r, s):
        traces.append(1)
        return apply_rule(r, s)

    plan(rule, stats)
    plan(off, stats)
    assert len(traces) == 1  # same structure, shapes and dtypes: one program for both
    with pytest.raises(TypeError, match="disarmed"):
        disarmed(chain(mask_rule(lambda st: st.std > 0)))


def test_conformal_threshold_is_the_finite_sample_quantile():
    scores = np.random.default_rng(1).permutation(np.arange(1.0, 20.0))
    assert conformal_threshold(scores, alpha=0.1).threshold == pytest.approx(18.0, rel=2e-9)  # ceil(20 * 0.9) = 18th
    assert conformal_threshold(scores, alpha=0.5).threshold == pytest.approx(10.0, rel=2e-9)
    small = conformal_threshold([1.0, 2.0, 3.0], alpha=0.1)  # ceil(4 * 0.9) = 4 > 3
    assert math.isinf(small.threshold) and small.to_dict()["threshold"] == "inf"
    assert math.isinf(ConformalThreshold.from_dict(small.to_dict()).threshold)
    with pytest.raises(ValueError):
        conformal_threshold(scores, alpha=1.5)
    with pytest.raises(ValueError):
        conformal_threshold([1.0, np.nan], alpha=0.1)


def test_scores_tied_with_the_threshold_are_not_vetoed_however_they_round():
    # a grid cell scored at 40 decisions: the threshold lands on its score, and the planner's own
    # arithmetic may round it an ulp higher; a tie is not a veto either way
    tied = 1.325040342871961
    scores = np.concatenate([np.linspace(0.1, 1.0, 60), np.full(40, tied)])
    t = conformal_threshold(scores, alpha=0.05).threshold
    assert t > np.nextafter(tied, np.inf) and t < tied * (1 + 1e-8)
    assert not np.nextafter(tied, np.inf) > t  # the ulp-higher copy stays unvetoed


def test_conformal_false_veto_rate_is_at_most_alpha_in_distribution():
    """Simulation: repeated calibrations on n states, false vetoes on fresh states."""
    num_worlds, alpha, n, m, repeats = 16, 0.1, 100, 2000, 20
    slopes = 1.0 + np.random.default_rng(2).normal(size=(num_worlds, 1, 1))
    # W: no movement; T_s(x) = slope_s * x0, so the epistemic std grows with |x0|.
    models = PlanningModels(
        world=linear_draws(np.zeros((num_worlds, 2 + 3, 2))), terminal=linear_draws(slopes),
        terminal_columns=(0,), num_actions=3,
    )
    proposal = UniformProposal(3)

    @jax.jit
    def calibration_stds(key):
        state_key, action_key = jax.random.split(key)
        states = jax.random.normal(state_key, (n, 2))  # held-out in-distribution states
        return calibration_scores(models, action_key, states, discount=0.9, proposal=proposal, proposal_params=None)

    @jax.jit
    def false_veto_rate(key, rule):
        state_key, action_key = jax.random.split(key)
        fresh = jax.random.normal(state_key, (m, 2))
        actions = proposal.sample(None, action_key, fresh, 1)
        return jnp.mean(rule.veto(action_stats(models, fresh, actions, discount=0.9)))

    rates = []
    for key in jax.random.split(jax.random.key(3), repeats):
        calibration_key, test_key = jax.random.split(key)
        record = conformal_threshold(calibration_stds(calibration_key), alpha=alpha)
        rates.append(float(false_veto_rate(test_key, epistemic_std_veto(record))))
    rates = np.asarray(rates)
    se = rates.std(ddof=1) / np.sqrt(repeats)
    assert rates.mean() <= alpha + 3 * se
    # ...and the threshold is not trivially conservative: E[rate] >= alpha - 1/(n+1).
    assert rates.mean() >= alpha - 1 / (n + 1) - 3 * se
