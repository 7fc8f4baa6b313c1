"""Per-kind planner drivers: the pairs each veto is calibrated on, its actor and its audit policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.envs import env_info
from priorguard.experiments.drivers import CemDriver, MctsDriver, OneStepDriver, alone_actor, driver_for
from priorguard.models.base import FunctionDraws
from priorguard.planners import FixedProposal, PlanningModels, calibration_scores, make_veto_rule
from priorguard.experiments.spec import PlannerSpec

COIN = env_info("priorguard/CoinShift-v1")  # 4 features, 3 actions


def _linear(params, x):
    return x @ params["w"]


def _models(num_worlds=3):
    # W: the delta of every feature depends on the action (one-hot columns 4..6), with a
    # spread between worlds that differs per action, so epistemic stds differ per action.
    rng = np.random.default_rng(0)
    w = np.zeros((num_worlds, 4 + 3, 4))
    w[:, 4:, 0] = np.array([-1.0, 0.0, 1.0]) + np.array([0.1, 0.5, 2.0]) * rng.normal(size=(num_worlds, 3))
    t = np.zeros((num_worlds, 4, 1))
    t[:, 0, 0] = 1.0
    return PlanningModels(world=FunctionDraws({"w": jnp.asarray(w)}, _linear),
                          terminal=FunctionDraws({"w": jnp.asarray(t)}, _linear),
                          terminal_columns=(0, 1, 2, 3), num_actions=3)


OBS = jnp.asarray(np.random.default_rng(1).uniform(0, 5, size=(5, 4)))


def test_driver_for_picks_the_kind():
    for kind, cls in (("one_step", OneStepDriver), ("mcts", MctsDriver), ("cem", CemDriver)):
        assert type(driver_for(PlannerSpec(kind=kind), COIN, 0.9)) is cls


def test_mcts_calibrates_on_every_action_at_each_state():
    models = _models()
    scores = MctsDriver(PlannerSpec(kind="mcts"), COIN, 0.9).calibration_scores(
        models, jax.random.key(0), OBS, FixedProposal(3), jnp.zeros((1, 3)))
    assert scores.shape == (OBS.shape[0] * 3,)
    # state-major: the three actions of state 0, then state 1, ...
    for a in range(3):
        one = calibration_scores(models, jax.random.key(0), OBS, discount=0.9, actions=jnp.full(5, a))
        np.testing.assert_allclose(np.asarray(scores)[a::3], np.asarray(one), rtol=1e-12)
    assert len(np.unique(np.round(np.asarray(scores)[:3], 9))) == 3  # the actions really differ


def test_one_step_calibrates_on_one_proposal_per_state():
    models = _models()
    logits = jnp.log(jnp.asarray([[1e-9, 1e-9, 1.0]]))  # A always proposes action 2
    scores = OneStepDriver(PlannerSpec(kind="one_step"), COIN, 0.9).calibration_scores(
        models, jax.random.key(0), OBS, FixedProposal(3), logits)
    want = calibration_scores(models, jax.random.key(0), OBS, discount=0.9, actions=jnp.full(5, 2))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(want), rtol=1e-12)


def test_one_step_actor_vetoes_and_falls_back_and_audits():
    models = _models()
    spec = PlannerSpec(kind="one_step", proposals=4, veto={"fallback": 1})
    driver = OneStepDriver(spec, COIN, 0.9)
    veto_all, _ = make_veto_rule(epistemic_std=-1.0)  # every std exceeds a negative threshold
    action, cands, mask, fallback = driver.actor(models, FixedProposal(3), jnp.zeros((1, 3)), veto_all)(
        jax.random.key(0), OBS)
    assert cands.shape == (5, 4) and bool(mask.all()) and bool(fallback.all())
    np.testing.assert_array_equal(np.asarray(action), 1)
    plan = driver.audit_plan(models, FixedProposal(3), jnp.zeros((1, 3)), veto_all)
    assert plan is not None and bool(plan(jax.random.key(0), OBS).used_fallback.all())
    allow, _ = make_veto_rule()
    _, _, mask, fallback = driver.actor(models, FixedProposal(3), jnp.zeros((1, 3)), allow)(jax.random.key(0), OBS)
    assert not bool(mask.any()) and not bool(fallback.any())


@pytest.mark.parametrize("kind", ["mcts", "cem"])
def test_costly_planners_are_not_audited_at_every_state(kind):
    assert driver_for(PlannerSpec(kind=kind), COIN, 0.9).audit_plan(_models(), None, None, None) is None


def test_alone_actor_never_vetoes():
    action, cands, mask, fallback = alone_actor(FixedProposal(3), jnp.zeros((1, 3)))(jax.random.key(0), OBS)
    assert action.shape == (5,) and cands.shape == (5, 1)
    assert not bool(mask.any()) and not bool(fallback.any())


@pytest.mark.parametrize("kind", ["one_step", "mcts"])
def test_a_checked_takes_as_draw_unless_the_veto_refuses_it(kind):
    """The "A checked" arm: one draw of A, no search; the fallback where the veto refuses it."""
    models = _models()
    driver = driver_for(PlannerSpec(kind=kind, veto={"fallback": 1}), COIN, 0.9)
    always_0 = jnp.log(jnp.asarray([[1.0, 1e-9, 1e-9]]))  # A proposes action 0 at every state
    allow, _ = make_veto_rule()
    action, cands, mask, fallback = driver.checked_actor(models, FixedProposal(3), always_0, allow)(
        jax.random.key(0), OBS)
    assert cands.shape == (5, 1) and not bool(mask.any()) and not bool(fallback.any())
    # A's draw, though T (feature 0, which action 0 lowers) ranks it last: no search
    np.testing.assert_array_equal(np.asarray(action), 0)
    planned = driver.actor(models, FixedProposal(3), always_0, allow)(jax.random.key(0), OBS)[0]
    if kind == "mcts":  # the search over every action with A as its prior finds a better one
        assert bool((np.asarray(planned) != 0).any())
    veto_all, _ = make_veto_rule(epistemic_std=-1.0)
    action, _, mask, fallback = driver.checked_actor(models, FixedProposal(3), always_0, veto_all)(
        jax.random.key(0), OBS)
    assert bool(mask.all()) and bool(fallback.all())
    np.testing.assert_array_equal(np.asarray(action), 1)
