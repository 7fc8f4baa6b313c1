"""Runner metric helpers: the training-range split of deploy episodes, regret on a subset, D's scores."""

import jax.numpy as jnp
import numpy as np

from priorguard.experiments.runner import in_training_range, subset_regret, termination_scores
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
