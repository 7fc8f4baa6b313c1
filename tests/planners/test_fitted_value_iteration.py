"""I by fitted value iteration: one-step backups through W, regressed round after round."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from planner_worlds import linear_draws

from priorguard.experiments.instrumental import fitted_value_iteration, mc_returns
from priorguard.models.base import Prediction
from priorguard.planners import PlanningModels, UniformProposal

NUM_WORLDS = 4


class LeastSquares:
    """A stand-in fit: the straight line through the targets (exact for the linear chain below)."""

    def __init__(self, x, y):
        self.coef = np.polyfit(np.asarray(x)[:, 0], y, 1)

    def predict(self, x):
        mean = jnp.asarray(np.polyval(self.coef, np.asarray(x)[:, 0]))[:, None]
        return Prediction(mean, jnp.zeros_like(mean), jnp.zeros_like(mean))


def chain(p_end=None):
    """obs [x, 1]: every action moves x by +1 (W's input is [x, 1, one-hot action]); T = x; D = p_end."""
    ends = {}
    if p_end is not None:  # D reads the constant column
        ends = {"termination": linear_draws(np.full((NUM_WORLDS, 1, 1), p_end)), "termination_columns": (1,)}
    step = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    return PlanningModels(world=linear_draws(np.tile(step, (NUM_WORLDS, 1, 1))),
                          terminal=linear_draws(np.ones((NUM_WORLDS, 1, 1))), terminal_columns=(0,),
                          num_actions=2, **ends)


def chain_starts(n):
    return jnp.stack([jnp.arange(float(n)), jnp.ones(n)], axis=1)


@pytest.mark.parametrize("p_end", [None, 0.25])
def test_fitted_value_iteration_reaches_the_monte_carlo_targets_of_its_horizon(p_end):
    starts = chain_starts(5)
    rounds, seen = 4, []

    def fit(targets, it):
        seen.append((it, np.asarray(targets)))
        return LeastSquares(starts[:, :1], targets)

    post = fitted_value_iteration(chain(p_end), UniformProposal(2), None, jax.random.key(0), starts, fit=fit,
                                  columns=(0,), iterations=rounds, discount=0.9, rollouts=4)
    assert [it for it, _ in seen] == list(range(rounds))
    x = np.arange(5.0)
    np.testing.assert_allclose(seen[0][1], x + 1)  # round 1: T one step ahead
    mc = mc_returns(chain(p_end), UniformProposal(2), None, jax.random.key(1), starts, horizon=rounds,
                    discount=0.9, rollouts=4)
    # with c = 1 - p_end: I_K(x) = sum_{t<K} (0.9 c)^t (x + 1 + t), the K-step Monte-Carlo return
    c = 1.0 if p_end is None else 1 - p_end
    closed = sum((0.9 * c) ** t * (x + 1 + t) for t in range(rounds))
    np.testing.assert_allclose(seen[-1][1], closed, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(mc), closed, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(post.predict(starts[:, :1]).mean[:, 0]), closed, rtol=1e-8)


def test_one_round_is_the_one_step_value():
    starts = chain_starts(3)
    post = fitted_value_iteration(chain(), UniformProposal(2), None, jax.random.key(0), starts,
                                  fit=lambda y, it: LeastSquares(starts[:, :1], y), columns=(0,),
                                  iterations=1, discount=0.5, rollouts=2)
    np.testing.assert_allclose(np.asarray(post.predict(starts[:, :1]).mean[:, 0]), [1.0, 2.0, 3.0], atol=1e-12)
