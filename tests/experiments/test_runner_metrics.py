"""Runner metric helpers: the training-range split of deploy episodes and regret on a subset."""

import numpy as np

from priorguard.experiments.runner import in_training_range, subset_regret


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
