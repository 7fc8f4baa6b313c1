"""CEM/MPC over worlds: a known quadratic, the elite mean, bounds, vetoes and fallback."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from planner_worlds import standardised

from priorguard.models.base import FunctionDraws
from priorguard.planners import PlanningModels, chain, epistemic_std_veto, plan_cem, sequence_returns

NUM_WORLDS = 4
Z = standardised([-1.5, -0.5, 0.5, 1.5])
jit_plan_cem = eqx.filter_jit(plan_cem)


def _move(params, x):  # W: next = obs + action (obs and action are 2-D)
    return x[:, 2:] + params["drift"]


def _quadratic(params, x):  # T_s(x) = -|x - target|^2 + spread * z_s * max(x0, 0)
    value = -jnp.sum((x - params["target"]) ** 2, axis=-1) + params["spread"] * jnp.maximum(x[:, 0], 0.0)
    return value[:, None]


def quadratic_models(target, spread=0.0, bound=2.0):
    target = jnp.asarray(target, dtype=jnp.float64)
    return PlanningModels(
        world=FunctionDraws({"drift": jnp.zeros((NUM_WORLDS, 2))}, _move),
        terminal=FunctionDraws(
            {"target": jnp.tile(target, (NUM_WORLDS, 1)), "spread": jnp.asarray(spread * Z)}, _quadratic),
        terminal_columns=(0, 1),
        action_low=-bound * jnp.ones(2),
        action_high=bound * jnp.ones(2),
    )


OBS = jnp.array([[0.0, 0.0], [0.5, 0.5]])
RULE_OFF = chain(epistemic_std_veto(np.inf))


def cem(models, seed, rule=RULE_OFF, fallback=(0.0, 0.0), **kwargs):
    kwargs = {"horizon": 1, "num_samples": 64, "num_elites": 8, "num_iterations": 8, **kwargs}
    return jit_plan_cem(models, jax.random.key(seed), OBS, fallback_action=jnp.asarray(fallback), veto=rule, **kwargs)


def test_finds_the_optimum_of_a_known_quadratic_and_returns_the_elite_mean():
    target = np.array([0.7, -1.2])
    out = cem(quadratic_models(target), 0)
    np.testing.assert_allclose(out.action, target - np.asarray(OBS), atol=0.05)
    assert not out.used_fallback.any()
    # The plan is the mean of the final elite set, not its best sample.
    elites = np.asarray(out.elite_mask)
    assert elites.sum(axis=1).tolist() == [8, 8]
    population = np.asarray(out.population)
    for b in range(2):
        np.testing.assert_allclose(out.plan[b], population[b][elites[b]].mean(axis=0), atol=1e-12)
        best = population[b][np.argmax(np.asarray(out.score[b]))]
        assert not np.allclose(out.plan[b], best)
        np.testing.assert_allclose(out.action[b], out.plan[b, 0])
    # Elites are the top-scoring sequences.
    for b in range(2):
        assert np.asarray(out.score[b])[elites[b]].min() >= np.asarray(out.score[b])[~elites[b]].max()


def test_plan_is_clipped_to_the_action_bounds():
    out = cem(quadratic_models([3.0, 0.0], bound=1.0), 1)
    np.testing.assert_allclose(out.action[:, 0], [1.0, 1.0], atol=1e-12)
    assert (np.abs(np.asarray(out.population)) <= 1.0).all()


def test_vetoed_sequences_never_become_elites_and_the_plan_respects_the_veto():
    # Epistemic std of T after the first step is 5 * max(x0', 0): vetoed where x0' > 0.1.
    target = np.array([0.7, -1.2])
    models = quadratic_models(target, spread=5.0)
    out = cem(models, 2, rule=chain(epistemic_std_veto(0.5)))
    assert not np.asarray(out.veto_mask)[np.asarray(out.elite_mask)].any()
    next_x0 = np.asarray(OBS[:, 0] + out.action[:, 0])
    assert (next_x0 <= 0.1 + 1e-9).all()
    assert not out.used_fallback.any() and not out.plan_vetoed.any()
    np.testing.assert_allclose(next_x0[0], 0.1, atol=0.05)  # constrained optimum
    # Everything vetoed: the declared fallback, reported.
    everything = cem(models, 2, rule=chain(epistemic_std_veto(-1.0)), fallback=(0.25, -0.25))
    assert everything.used_fallback.all()
    np.testing.assert_allclose(everything.action, [[0.25, -0.25]] * 2)


def test_sequence_returns_follow_each_world_pets_style():
    models = quadratic_models([0.0, 0.0], spread=1.0)
    seq = jnp.array([[[[1.0, 0.0], [1.0, 0.0]]]])  # one state, one sequence, H = 2
    returns = sequence_returns(models, jnp.zeros((1, 2)), seq, discount=0.5)
    # x1 = 1: T = -1 + z; x2 = 2: T = -4 + 2 z; return = T1 + 0.5 T2.
    np.testing.assert_allclose(returns[0, 0], (-1 + Z) + 0.5 * (-4 + 2 * Z), atol=1e-12)


def test_multistep_plan_reaches_the_target_within_the_horizon():
    # Bounds 0.5 per step: the target at distance 1.2 in x1 needs several steps; returns reward every step.
    out = jit_plan_cem(quadratic_models([0.0, -1.2], bound=0.5), jax.random.key(4), OBS, horizon=3,
                       fallback_action=jnp.zeros(2), num_samples=64, num_elites=8, num_iterations=6, discount=1.0)
    assert out.plan.shape == (2, 3, 2) and out.population.shape == (2, 64, 3, 2)
    np.testing.assert_allclose(out.action[0], [0.0, -0.5], atol=0.1)  # full speed towards the target first
