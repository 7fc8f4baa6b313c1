"""One-step planner and the PlanningModels bundle."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from planner_worlds import linear_draws, standardised

from priorguard.models.base import FunctionDraws
from priorguard.planners import (
    BoxUniformProposal,
    FixedProposal,
    PlanningModels,
    UniformProposal,
    chain,
    epistemic_std_veto,
    lower_confidence_bound,
    plan_one_step,
    value_drop_veto,
)

NUM_WORLDS, NUM_ACTIONS = 4, 4
# Action a moves x0 by MEANS[a] + SPREADS[a] * z_s in world s (z standardised over worlds).
MEANS = np.array([0.0, 1.0, 2.0, -1.0])
SPREADS = np.array([0.0, 0.1, 3.0, 0.0])
Z = standardised([-1.5, -0.5, 0.5, 1.5])


def bandit_models(with_instrumental=False):
    w = np.zeros((NUM_WORLDS, 2 + NUM_ACTIONS, 2))
    w[:, 2:, 0] = MEANS[None] + SPREADS[None] * Z[:, None]
    instrumental = linear_draws(np.full((NUM_WORLDS, 1, 1), 2.0)) if with_instrumental else None
    return PlanningModels(
        world=linear_draws(w),
        terminal=linear_draws(np.ones((NUM_WORLDS, 1, 1))),  # T = x0
        instrumental=instrumental,  # I = 2 * x1 (x1 never moves)
        terminal_columns=(0,),
        instrumental_columns=(1,),
        num_actions=NUM_ACTIONS,
    )


OBS = jnp.array([[0.0, 1.0], [5.0, -1.0]])
MODELS = bandit_models()
MODELS_WITH_I = bandit_models(with_instrumental=True)
jit_plan_one_step = eqx.filter_jit(plan_one_step)


def rule(std=np.inf, drop=np.inf, kappa=0.0):
    """One rule structure with array hyperparameters: every setting shares one compile."""
    return chain(epistemic_std_veto(std), value_drop_veto(drop), lower_confidence_bound(kappa))


def plan(key, models=MODELS, **kwargs):
    kwargs = {"num_candidates": NUM_ACTIONS, "fallback_action": jnp.asarray(0), "discount": 0.5, "veto": rule(),
              **kwargs}
    return jit_plan_one_step(models, UniformProposal(NUM_ACTIONS), None, key, OBS, **kwargs)


def test_statistics_match_the_closed_form():
    out = plan(jax.random.key(0), MODELS_WITH_I)
    actions = np.asarray(out.candidate_actions)
    expected_mean = np.asarray(OBS[:, :1]) + MEANS[actions] + 0.5 * 2.0 * np.asarray(OBS[:, 1:])
    np.testing.assert_allclose(out.value_mean, expected_mean, atol=1e-12)
    np.testing.assert_allclose(out.value_std, SPREADS[actions], atol=1e-12)
    np.testing.assert_allclose(out.stats.current_value, OBS[:, 0] + OBS[:, 1])
    assert out.veto_mask.shape == (2, NUM_ACTIONS) and not out.veto_mask.any()
    np.testing.assert_array_equal(out.action, [2, 2])  # best mean, no veto


def test_epistemic_veto_lcb_and_failsafe_change_the_choice():
    key = jax.random.key(1)
    out = plan(key, veto=rule(std=1.0))
    np.testing.assert_array_equal(out.action, [1, 1])
    np.testing.assert_array_equal(out.veto_mask, np.asarray(out.candidate_actions) == 2)
    out = plan(key, veto=rule(kappa=1.0))  # 2 - 3 < 1 - 0.1
    np.testing.assert_array_equal(out.action, [1, 1])
    assert not out.veto_mask.any()
    # Failsafe: action 3 drops the value by 1; with value_drop 0.5 it is vetoed.
    out = plan(key, veto=rule(drop=0.5))
    np.testing.assert_array_equal(out.veto_mask, np.asarray(out.candidate_actions) == 3)


def test_all_vetoed_returns_the_declared_fallback_and_says_so():
    out = plan(jax.random.key(2), veto=rule(std=-1.0), fallback_action=jnp.asarray(3))
    assert out.veto_mask.all() and out.used_fallback.all()
    np.testing.assert_array_equal(out.action, [3, 3])
    np.testing.assert_array_equal(out.candidate_index, [-1, -1])


def test_same_key_same_decision_different_keys_different_draws():
    proposal = FixedProposal(NUM_ACTIONS)
    logits = jnp.zeros(NUM_ACTIONS)
    run = jit_plan_one_step
    kwargs = {"num_candidates": 2, "fallback_action": 0, "veto": rule(std=1.0)}
    a = run(MODELS, proposal, logits, jax.random.key(7), OBS, **kwargs)
    b = run(MODELS, proposal, logits, jax.random.key(7), OBS, **kwargs)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
    draws = {
        tuple(np.asarray(run(MODELS, proposal, logits, jax.random.key(s), OBS, **kwargs).candidate_actions).ravel())
        for s in range(8)
    }
    assert len(draws) > 1


def test_vmaps_over_an_extra_batch_of_states():
    keys = jax.random.split(jax.random.key(3), 3)
    obs = jnp.stack([OBS, OBS + 1.0, OBS - 1.0])
    out = jax.jit(jax.vmap(lambda k, o: plan_one_step(
        MODELS, UniformProposal(NUM_ACTIONS), None, k, o, num_candidates=3, fallback_action=0,
        veto=epistemic_std_veto(1.0))))(keys, obs)
    assert out.action.shape == (3, 2) and out.veto_mask.shape == (3, 2, 3)
    single = jit_plan_one_step(MODELS, UniformProposal(NUM_ACTIONS), None, keys[1], obs[1],
                           num_candidates=3, fallback_action=0, veto=epistemic_std_veto(1.0))
    np.testing.assert_array_equal(out.action[1], single.action)


def test_continuous_actions_and_fallback_vector():
    # next = obs + a (2-D), T = -|next - target|^2, identical worlds.
    target = jnp.array([0.5, -0.25])
    models = PlanningModels(
        world=FunctionDraws({"w": jnp.zeros((3, 1))}, lambda p, x: x[:, 2:] + p["w"]),
        terminal=FunctionDraws({"t": jnp.tile(target, (3, 1))}, lambda p, x: -jnp.sum((x - p["t"]) ** 2, -1, keepdims=True)),
        terminal_columns=(0, 1),
        action_low=-jnp.ones(2),
        action_high=jnp.ones(2),
    )
    proposal = BoxUniformProposal(low=-jnp.ones(2), high=jnp.ones(2))

    def run(seed, fallback, drop):
        return jit_plan_one_step(models, proposal, None, jax.random.key(seed), jnp.zeros((1, 2)),
                                 num_candidates=256, fallback_action=jnp.asarray(fallback), veto=rule(drop=drop))

    out = run(4, [0.0, 0.0], np.inf)
    assert out.action.shape == (1, 2) and out.candidate_actions.shape == (1, 256, 2)
    np.testing.assert_allclose(out.action[0], target, atol=0.2)
    best = int(jnp.argmax(out.value_mean[0]))
    np.testing.assert_array_equal(out.action[0], out.candidate_actions[0, best])
    # Every move loses value from a state at the target: with value_drop 0 all are vetoed.
    at_target = jit_plan_one_step(models, proposal, None, jax.random.key(5), target[None],
                                  num_candidates=256, fallback_action=jnp.array([0.0, 0.5]), veto=rule(drop=0.0))
    assert at_target.veto_mask.all() and bool(at_target.used_fallback[0])
    np.testing.assert_allclose(at_target.action[0], [0.0, 0.5])
    with pytest.raises(ValueError, match="fallback_action"):
        plan_one_step(models, proposal, None, jax.random.key(4), jnp.zeros((1, 2)), num_candidates=8,
                      fallback_action=jnp.array([0.0, 5.0]))


def test_non_finite_predictions_fail_loudly_inside_jit():
    bad = PlanningModels(
        world=MODELS.world,
        terminal=FunctionDraws({"w": jnp.full((NUM_WORLDS, 1, 1), jnp.nan)}, lambda p, x: x @ p["w"]),
        terminal_columns=(0,), num_actions=NUM_ACTIONS,
    )
    with pytest.raises(Exception, match="non-finite"):
        jax.block_until_ready(eqx.filter_jit(plan_one_step)(
            bad, UniformProposal(NUM_ACTIONS), None, jax.random.key(0), OBS, num_candidates=2, fallback_action=0))


def test_planning_models_validate_at_the_boundary():
    draws = linear_draws(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="exactly one action space"):
        PlanningModels(world=draws, terminal=draws, terminal_columns=(0,))
    with pytest.raises(ValueError, match="same number of draws"):
        PlanningModels(world=draws, terminal=linear_draws(np.zeros((3, 1, 1))), terminal_columns=(0,), num_actions=2)
    with pytest.raises(ValueError, match="instrumental_columns"):
        PlanningModels(world=draws, terminal=draws, instrumental=draws, terminal_columns=(0,), num_actions=2)
    with pytest.raises(ValueError, match="fallback_action"):
        plan_one_step(MODELS, UniformProposal(NUM_ACTIONS), None, jax.random.key(0), OBS, num_candidates=2,
                      fallback_action=NUM_ACTIONS)


TRACED = []


@eqx.filter_jit
def _terminal_values(models, obs):
    TRACED.append(1)  # runs only while tracing
    return models.terminal_value_all_worlds(obs)


def test_models_reading_other_columns_reuse_the_compiled_planner():
    obs = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    values = []
    for column in (0, 1):
        models = PlanningModels(world=linear_draws(np.zeros((2, 4, 2))), terminal=linear_draws(np.ones((2, 1, 1))),
                                terminal_columns=(column,), num_actions=2)
        values.append(np.asarray(_terminal_values(models, obs)))
    assert len(TRACED) == 1
    np.testing.assert_allclose(values[0][0], [1.0, 3.0])
    np.testing.assert_allclose(values[1][0], [2.0, 4.0])
    with pytest.raises(ValueError, match="column indices >= 0"):
        PlanningModels(world=linear_draws(np.zeros((2, 4, 2))), terminal=linear_draws(np.ones((2, 1, 1))),
                       terminal_columns=(-1,), num_actions=2)
