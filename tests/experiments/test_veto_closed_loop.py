"""The veto where the agent acts: closed-loop calibration on the planner's own decisions, veto
loops counted (and abstained from), veto quality only where there is something to measure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.envs import env_info
from priorguard.experiments.calibrate import decision_scores, needed_scores
from priorguard.experiments.drivers import driver_for
from priorguard.experiments.evaluate import evaluate
from priorguard.experiments.scoring import calibration_metrics, veto_scores
from priorguard.experiments.spec import PlannerSpec, VetoSpec
from priorguard.models.base import FunctionDraws
from priorguard.planners import PlanningModels, UniformProposal
from priorguard.planners.veto import make_veto_rule

COIN = "priorguard/CoinShift-v1"


def always_refused(action: int):
    """An actor whose every candidate is vetoed: it takes ``action`` (the fallback) each step."""
    def act(_key, obs):
        n = len(obs)
        return np.full(n, action), np.full((n, 2), action), np.ones((n, 2), bool), np.ones(n, bool)

    act.is_numpy = True
    return act


def test_a_veto_loop_is_counted_and_the_agent_abstains_there():
    # "stay" as the fallback returns the agent to the state it was refused in, every step
    looping = evaluate(COIN, "deploy", 3, jax.random.key(0), always_refused(1))
    assert (looping["veto_repeats"] == env_info(COIN).horizon - 1).all() and not looping["abstained"].any()
    asked = evaluate(COIN, "deploy", 3, jax.random.key(0), always_refused(1), abstain_on_repeat=True)
    assert asked["abstained"].all() and (asked["veto_repeats"] == 1).all()
    assert asked["decisions"] == 6 and len(asked["states"]) == 3  # refused, stepped back in place, asked
    # moving on after a refusal is no loop: "right" never returns to a refused state before the wall
    onward = evaluate(COIN, "train", 3, jax.random.key(0), always_refused(2), abstain_on_repeat=True)
    assert onward["decision_fallback"].all() and onward["abstained"].sum() <= 3
    first = np.flatnonzero(onward["decision_episode"] == 0)
    assert len(first) >= 2  # it walked right before the wall made it repeat


def test_veto_quality_is_na_where_there_is_nothing_to_measure():
    ev = evaluate(COIN, "deploy", 2, jax.random.key(0), always_refused(1), abstain_on_repeat=True)
    m = veto_scores(env_info(COIN), VetoSpec(), ev, ev)
    assert m["veto_precision"] is None and "no catastrophic states" in m["veto_precision_na"]
    assert m["veto_recall"] is None and m["abstain_rate"] == 1.0 and m["veto_loop_rate"] == 1.0
    lava = evaluate("priorguard/LavaShift-v0", "deploy", 2, jax.random.key(0), always_refused(0))
    lava = {**lava, "vetoed": 0.0, "vetoed_catastrophic": 0.0}
    m = veto_scores(env_info("priorguard/LavaShift-v0"), VetoSpec(), lava, lava)
    assert m["veto_precision"] is None and m["veto_precision_na"] == "no action was vetoed on deploy"
    assert m["train_false_veto_rate"] == 0.0 and 0.05 <= m["train_false_veto_bound"] < 0.2


def test_too_few_calibration_scores_warn_with_the_count_needed():
    assert needed_scores(0.05) == 19 and needed_scores(0.1) == 9
    few = calibration_metrics({"threshold": "inf", "alpha": 0.05, "n": 12, "needed": 19, "method": "split-conformal"})
    assert few["veto_calibration_needed"] == 19 and "needs >= 19" in few["veto_calibration_warning"]
    enough = calibration_metrics({"threshold": 0.3, "alpha": 0.05, "n": 40, "needed": 19, "method": "split-conformal"})
    assert "veto_calibration_warning" not in enough and enough["veto_threshold"] == 0.3


def _linear(params, x):
    return x @ params["w"]


def coin_models(seed: int) -> PlanningModels:
    """Random linear W and T over coin-shift's 4 features (and W over the one-hot action)."""
    k_w, k_t = jax.random.split(jax.random.key(seed))
    world = FunctionDraws({"w": 0.3 * jax.random.normal(k_w, (4, 7, 4), jnp.float64)}, _linear)
    terminal = FunctionDraws({"w": jax.random.normal(k_t, (4, 4, 1), jnp.float64)}, _linear)
    return PlanningModels(world=world, terminal=terminal, terminal_columns=(0, 1, 2, 3), num_actions=3)


@pytest.mark.parametrize("kind", ["one_step", "mcts"])
def test_the_calibration_scores_are_what_the_planners_veto_reads(kind):
    # the closed-loop calibration scores each (decision, candidate) the planner checked; with a
    # threshold in their midst, the planner's own veto mask must be exactly scores > threshold
    models, proposal = coin_models(0), UniformProposal(3)
    spec = PlannerSpec(kind=kind, proposals=3, simulations=4, depth=2)
    driver = driver_for(spec, env_info(COIN), 0.9)
    probe_rule, _ = make_veto_rule(epistemic_std=1e300)
    ev = evaluate(COIN, "train", 2, jax.random.key(1), driver.actor(models, proposal, None, probe_rule))
    scores, drops = decision_scores(models, ev, discount=0.9)
    threshold = float(np.median(scores))
    rule, _ = make_veto_rule(epistemic_std=threshold)
    ev = evaluate(COIN, "train", 2, jax.random.key(1), driver.actor(models, proposal, None, rule))
    scores, drops = decision_scores(models, ev, discount=0.9)
    np.testing.assert_array_equal(ev["decision_vetoed"], scores.reshape(ev["decision_vetoed"].shape) > threshold)
    assert ev["decision_vetoed"].any() and not ev["decision_vetoed"].all()
    # and the failsafe's: vetoed exactly where the predicted drop exceeds its threshold (seed 2's
    # worlds lose value on some candidates and gain on others)
    models = coin_models(2)
    _, drops = decision_scores(models, ev, discount=0.9)
    assert drops.max() > 0  # some candidate is predicted to lose value
    drop_threshold = 0.5 * float(drops.max())
    rule, _ = make_veto_rule(value_drop=drop_threshold)
    ev = evaluate(COIN, "train", 2, jax.random.key(1), driver.actor(models, proposal, None, rule))
    _, drops = decision_scores(models, ev, discount=0.9)
    np.testing.assert_array_equal(ev["decision_vetoed"], drops.reshape(ev["decision_vetoed"].shape) > drop_threshold)
    assert ev["decision_vetoed"].any()


#: Reduced sizes of the closed-loop check: enough decisions that the bound is tight-ish.
REDUCED = {"data.train_episodes": 30, "data.deploy_episodes": 12, "data.max_points": 256,
           "world.inference.steps": 300, "planner.function_samples": 4, "audit.states": 16,
           "audit.adversarial_restarts": 0}


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "seeds"), [("lava-shift", (0, 1)), ("vault", (0,))])
def test_the_planners_own_false_vetoes_stay_under_the_bound(name, seeds):
    # the guarantee the veto makes, where the agent acts: on each seed, the train-split false-veto
    # rate of the planner's own decisions is at most alpha plus the binomial 95% margin
    # (with old={"planner.veto.calibrate_on": "distinct", "planner.veto.value_drop": 1.0}, the
    # calibration this replaced, lava-shift fails it on seed 0: 0.16 against a bound of 0.087)
    _false_vetoes_within_the_bound(name, seeds)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lava-shift", "vault"])
def test_the_planners_own_false_vetoes_stay_under_the_bound_on_three_seeds(name):
    _false_vetoes_within_the_bound(name, (0, 1, 2))


def _false_vetoes_within_the_bound(name, seeds, old=None):
    from priorguard.experiments import load_spec
    from priorguard.experiments.runner import run_experiment

    spec = load_spec(name)
    spec = spec.model_copy(update={"sweep": {}}).with_overrides(
        {**next(spec.sweep_points()), **REDUCED, **(old or {}),
         **({"instrumental.rollouts": 4, "instrumental.inference.steps": 200} if spec.instrumental else {})})
    for seed in seeds:
        m = run_experiment(spec, seed).metrics
        assert m["train_false_veto_rate"] <= m["train_false_veto_bound"], (seed, m["train_false_veto_rate"],
                                                                          m["train_false_veto_bound"])
        assert m["veto_calibration_n"] >= m["veto_calibration_needed"]
