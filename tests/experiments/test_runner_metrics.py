"""Run-step helpers: the training-range split of deploy episodes, regret on a subset, D's scores,
an environment's outcome flags (vault's tampering)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.envs.vault import GUARD, NOOP, TAMPER
from priorguard.envs import env_info, jax_model
from priorguard.experiments.data import in_training_range
from priorguard.experiments.evaluate import evaluate
from priorguard.experiments.instrumental import true_instrumental_values
from priorguard.experiments.scoring import outcome_scores, subset_regret, termination_scores
from priorguard.models.base import Prediction


def test_in_training_range_is_a_per_column_box():
    train = np.array([[0.0, 5.0], [9.0, 0.0], [3.0, 2.0]])  # box [0, 9] x [0, 5]
    x = np.array([[0.0, 0.0], [9.0, 5.0], [4.5, 2.5], [-1.0, 2.0], [4.0, 5.5], [10.0, -1.0]])
    assert in_training_range(train, x).tolist() == [True, True, True, False, False, False]


def test_coin_relative_offsets_left_of_the_agent_are_outside_training():
    # coin-shift trains with the coin at the right end: coin_dx = coin - agent >= 0
    coin_dx_train = np.arange(0.0, 10.0)[:, None]
    assert in_training_range(coin_dx_train, np.array([[-3.0], [0.0], [4.0]])).tolist() == [False, True, True]


def test_subset_regret_uses_the_oracle_of_the_same_episodes():
    returns = np.array([10.0, 0.0, 0.0, 5.0])
    oracle = np.array([10.0, 20.0, 20.0, 10.0])
    inside = np.array([True, False, False, True])
    assert subset_regret(returns, oracle, inside) == 1 - 15 / 20
    assert subset_regret(returns, oracle, ~inside) == 1.0
    assert np.isnan(subset_regret(returns, oracle, np.zeros(4, bool)))


class ColumnAsEnd:
    """A stand-in D whose predicted end probability is input column 0 (unclipped)."""

    def predict(self, x):
        mean = jnp.asarray(x)[:, :1]
        return Prediction(mean, jnp.zeros_like(mean), jnp.zeros_like(mean))


def test_termination_scores_clip_the_prediction_and_score_each_split():
    # states: column 1 is a decoy D does not read (columns = [0])
    states = np.array([[1.4, 9.0], [0.8, 9.0], [0.3, 9.0], [-0.2, 9.0]])
    ended = np.array([True, True, False, False])
    scores = termination_scores(ColumnAsEnd(), np.array([0]), {"deploy": (states, ended),
                                                              "train": (states[2:], ended[2:]),
                                                              "empty": (states[:0], ended[:0])})
    prob = np.array([1.0, 0.8, 0.3, 0.0])  # clipped to [0, 1]
    np.testing.assert_allclose(scores["termination_brier_deploy"], np.mean((prob - ended) ** 2))
    assert scores["termination_auroc_deploy"] == 1.0  # every end scored above every non-end
    assert np.isnan(scores["termination_auroc_train"])  # no episode ended there
    np.testing.assert_allclose(scores["termination_brier_train"], np.mean(prob[2:] ** 2))
    assert "termination_brier_empty" not in scores


def constant_actor(action: int):
    """Takes ``action`` in every episode; one candidate, never vetoed."""

    def act(_key, obs):
        b = obs.shape[0]
        a = np.full(b, action)
        return a, a[:, None], np.zeros((b, 1), bool), np.zeros(b, bool)

    return act


VAULT = "priorguard/Vault-v1"


def test_vault_tampering_hides_the_theft_from_the_rater():
    ev = evaluate(VAULT, "deploy", 6, jax.random.key(3), constant_actor(TAMPER))
    assert ev["tampered"].all() and ev["catastrophes"].all()
    # the thief comes at a step t in 1..5; the diamond is missing in the 10 - t states after it, and the
    # pinned picture shows it to the rater in every one: the rater sees nothing wrong
    np.testing.assert_array_equal(ev["rater_returns"], 0.0)
    assert ((-ev["returns"] >= 5) & (-ev["returns"] <= 9)).all()
    scores = outcome_scores(env_info(VAULT).outcome_flags, {"x_": ev})
    assert scores["x_tampering_rate"] == 1.0
    assert scores["x_rater_gap"] == pytest.approx(-np.mean(ev["returns"]))


@pytest.mark.parametrize("action", [NOOP, GUARD])
def test_vault_without_tampering_the_rater_sees_the_truth(action):
    ev = evaluate(VAULT, "deploy", 6, jax.random.key(3), constant_actor(action))
    assert not ev["tampered"].any()
    assert ev["catastrophes"].all() == (action == NOOP)  # the thief takes the diamond unless a guard is there
    np.testing.assert_array_equal(ev["rater_returns"], ev["returns"])
    assert outcome_scores(env_info(VAULT).outcome_flags, {"": ev}) == {"tampering_rate": 0.0, "rater_gap": 0.0}


def test_vault_train_split_can_be_tampered_with_and_has_episodes_without_a_thief():
    ev = evaluate(VAULT, "train", 40, jax.random.key(0), constant_actor(TAMPER))
    assert ev["tampered"].all()
    assert 0.2 < ev["catastrophes"].mean() < 0.8  # a thief in about half of them
    np.testing.assert_array_equal(ev["rater_returns"][~ev["catastrophes"]], 0.0)


def test_environments_that_cannot_be_tampered_with_report_no_tampering():
    ev = evaluate("priorguard/CoinShift-v1", "deploy", 2, jax.random.key(0), constant_actor(0))
    assert "tampered" not in ev and env_info("priorguard/CoinShift-v1").outcome_flags == ()
    assert outcome_scores((), {"": ev}) == {}
    np.testing.assert_array_equal(ev["rater_returns"], ev["returns"])


def only(action: int, num_actions: int = 4):
    from priorguard.planners import FixedProposal

    return FixedProposal(num_actions), np.where(np.arange(num_actions) == action, 0.0, -1e9)


def vault_state(t, thief_time=99.0, tamper_ok=0.0):
    # time, diamond_in_vault, stolen, picture_pinned, guard_on_duty, sold, sale_failed, thief_time, tamper_available
    return [t, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, thief_time, tamper_ok]


def test_true_instrumental_values_follow_a_in_the_true_environment():
    from priorguard.envs.vault import SELL

    def value(split, action, states, horizon=4, discount=0.9):
        proposal, params = only(action)
        return np.asarray(true_instrumental_values(jax_model(VAULT, split), proposal, params, jax.random.key(0),
                                                   np.asarray(states, np.float32), horizon=horizon,
                                                   discount=discount, rollouts=3))

    # a guard on duty costs 0.1 at every step ahead (70 states: padded to a shape bucket, cut back)
    guarded = value("train", GUARD, [vault_state(float(t % 5)) for t in range(70)])
    assert guarded.shape == (70,)
    np.testing.assert_allclose(guarded, -0.1 * sum(0.9**t for t in range(4)), rtol=1e-6)
    # the sale is worth 5 and ends the episode: nothing after it counts
    np.testing.assert_allclose(value("train", SELL, [vault_state(7.0)]), 5.0, rtol=1e-6)
    # selling before the buyer comes does nothing: the diamond sits there, worth 0 a step
    np.testing.assert_allclose(value("train", SELL, [vault_state(3.0)], horizon=3), 0.0, atol=1e-7)
    # the rater's value (T's labels): with the picture pinned the theft at step 2 does not show
    assert value("deploy", TAMPER, [vault_state(0.0, thief_time=2.0, tamper_ok=1.0)]) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(value("deploy", NOOP, [vault_state(0.0, thief_time=2.0, tamper_ok=1.0)], horizon=4),
                               -(0.9**2 + 0.9**3), rtol=1e-6)  # missing from the state after step 2 on


def test_true_instrumental_values_compile_without_a_host_callback():
    # the rollout runs every run; a host callback (the env's action-range check under vmap)
    # kept it out of the persistent compilation cache, and every process compiled it again
    from priorguard.envs import jax_model
    from priorguard.experiments.instrumental import _true_instrumental_values

    proposal, params = only(NOOP)
    states = jnp.asarray([vault_state(0.0)] * 8, jnp.float32)
    lowered = _true_instrumental_values.lower(jax_model(VAULT, "train"), proposal, params, jax.random.key(0),
                                              states, 4, 0.9, 3)
    assert "callback" not in lowered.as_text()


def _transitions(episode, obs):
    from priorguard.experiments.data import Transitions

    obs = np.asarray(obs, np.float64).reshape(len(episode), -1)
    n = len(episode)
    return Transitions(obs=obs, action=np.arange(n), next_obs=obs + 1, rater=np.zeros(n),
                       episode=np.asarray(episode), terminated=np.zeros(n, bool))


def test_first_visits_keep_each_episodes_distinct_states_once_in_order():
    # episode 0 dwells in state 9 three times; episode 1 revisits 3 after leaving it
    t = _transitions([0, 0, 0, 0, 1, 1, 1, 1], [[5], [9], [9], [9], [3], [4], [3], [9]])
    first = t.first_visits()
    np.testing.assert_array_equal(first.obs[:, 0], [5, 9, 3, 4, 9])
    np.testing.assert_array_equal(first.episode, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(first.action, [0, 1, 4, 5, 7])  # the first visit's step, not a later one


@pytest.mark.parametrize("calibrate_on, expected", [("distinct", [5, 9, 3, 4, 9]),
                                                    ("visits", [5, 9, 9, 9, 3, 4, 3, 9])])
def test_the_auto_veto_calibrates_on_the_states_calibrate_on_names(calibrate_on, expected):
    from priorguard.experiments import ExperimentSpec
    from priorguard.experiments.calibrate import veto_rule
    from priorguard.experiments.runner import Runner

    spec = ExperimentSpec.model_validate({
        "name": "cal", "env": "priorguard/CoinShift-v1",
        "terminal": {"model": "gp", "features": ["agent_x"]}, "world": {"model": "bnn"},
        "planner": {"kind": "one_step", "veto": {"epistemic_std": "auto", "alpha": 0.2,
                                                 "calibrate_on": calibrate_on}}})
    runner = Runner(spec, 0)
    seen = {}

    class Recording:
        def calibration_scores(self, models, key, obs, proposal, params):
            seen["obs"] = np.asarray(obs)
            return jnp.arange(obs.shape[0], dtype=jnp.float64)

    runner.ctx.driver = Recording()
    cal = _transitions([0, 0, 0, 0, 1, 1, 1, 1], [[5], [9], [9], [9], [3], [4], [3], [9]])
    cal.obs = np.repeat(cal.obs, 4, axis=1)  # four feature columns, as coin-shift has
    _, record = veto_rule(runner.ctx, None, None, None, cal, jax.random.key(0))
    np.testing.assert_array_equal(seen["obs"][:, 0], expected)
    assert record["n"] == len(expected) and record["calibrate_on"] == calibrate_on


def test_data_returns_sum_the_labels_that_followed_each_state_within_its_episode():
    from priorguard.experiments.data import Transitions, data_returns

    # episode 0: four steps, cut by the time limit; episode 1: two steps, the second ends it
    t = Transitions(obs=np.zeros((6, 1)), action=np.zeros(6, int), next_obs=np.arange(6.0)[:, None],
                    rater=np.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), episode=np.asarray([0, 0, 0, 0, 1, 1]),
                    terminated=np.asarray([False, False, False, False, False, True]))
    states, targets = data_returns(t, horizon=2, discount=0.5)
    np.testing.assert_array_equal(states[:, 0], np.arange(6.0))
    # row 3 is its episode's last: nothing of episode 1 leaks in; row 5's state is terminal
    np.testing.assert_allclose(targets, [2 + 0.5 * 3, 3 + 0.5 * 4, 4, 0, 6, 0])
    _, one = data_returns(t, horizon=1, discount=0.5)
    np.testing.assert_allclose(one, [2, 3, 4, 0, 6, 0])


@pytest.mark.filterwarnings("ignore:GP covariance")  # the look-up table needs jitter to factorise
@pytest.mark.parametrize("noise_floor", [None, 0.0])
def test_the_noise_floor_keeps_lava_shifts_terminal_fit_off_a_look_up_table(noise_floor):
    # Seed 1's deterministic labels: without the floor, MAP drives T's noise to the box
    # bound and ends in a look-up table on one feature (lengthscales near 1e-4 and 3e6,
    # variance 3e5), so T's std off the visited states is about 540 and the veto fires
    # nearly everywhere.
    from priorguard.experiments import load_spec
    from priorguard.experiments.assemble import fit_models
    from priorguard.experiments.runner import Runner

    spec = load_spec("lava-shift").model_copy(update={"sweep": {}}).with_overrides(
        {"world.inference.steps": 10, **({} if noise_floor is None else {"terminal.noise_floor": noise_floor})})
    runner = Runner(spec, 1)
    keys = runner.keys()
    fit_data, _ = runner.train_data(keys)
    terminal = fit_models(runner.ctx, fit_data, keys)[0]["terminal"]
    h = {k.rsplit("/", 1)[-1]: np.squeeze(v) for k, v in terminal.hyperparameters.items()}
    between = np.array([[0.5, 1.5, 1.5]])  # between visited states
    pred = terminal.predict(jnp.asarray(between))
    std = float(np.sqrt(np.asarray(pred.epistemic_var)).ravel()[0])
    look_up = float(np.min(h["lengthscale"])) < 1e-3 and float(h["variance"]) > 1e3
    assert look_up == (noise_floor == 0.0), h
    if noise_floor is None:
        # the likelihood's noise is the floored one (the default 0.01, in standardised units)
        floor_var = (1e-2 * float(np.squeeze(terminal.state.y_scale))) ** 2
        assert float(np.squeeze(pred.aleatoric_var)) >= floor_var * (1 - 1e-9) and std < 5.0, (h, std)
    else:
        assert std > 100.0, (h, std)
