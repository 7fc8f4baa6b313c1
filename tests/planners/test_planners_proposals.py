"""Proposal policies: sampling, fixed policies, imitation and policy-gradient learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from planner_worlds import linear_draws

from priorguard.planners import (
    FixedProposal,
    MLPProposal,
    PlanningModels,
    UniformProposal,
    fit_imitation,
    fit_policy_gradient,
    sample_from_logits,
)


def test_sampling_without_replacement_is_distinct_and_matches_the_policy():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    draws = jax.jit(lambda key: sample_from_logits(key, jnp.tile(logits, (4000, 1)), 3))(jax.random.key(0))
    draws = np.asarray(draws)
    assert draws.shape == (4000, 3)
    assert all(len(set(row)) == 3 for row in draws[:200])
    # The first of the k draws is a draw from the policy itself.
    freq = np.bincount(draws[:, 0], minlength=4) / 4000
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / 4000))
    with pytest.raises(ValueError, match="replace=True"):
        sample_from_logits(jax.random.key(0), logits, 5)
    assert sample_from_logits(jax.random.key(0), logits, 6, replace=True).shape == (1, 6)


def test_fixed_and_uniform_proposals():
    obs = jnp.zeros((2, 3))
    assert UniformProposal(3).logits(None, obs).shape == (2, 3)
    np.testing.assert_allclose(FixedProposal(3).probs(jnp.log(jnp.array([0.2, 0.3, 0.5])), obs)[1], [0.2, 0.3, 0.5])
    by_state = FixedProposal(2, logits_fn=lambda params, o: jnp.stack([o[:, 0], -o[:, 0]], -1) * params)
    np.testing.assert_array_equal(jnp.argmax(by_state.logits(2.0, jnp.array([[1.0], [-1.0]])), -1), [0, 1])
    k1, k2 = jax.random.split(jax.random.key(1))
    a = UniformProposal(8).sample(None, k1, obs, 4)
    assert not np.array_equal(a, UniformProposal(8).sample(None, k2, obs, 4))
    np.testing.assert_array_equal(a, UniformProposal(8).sample(None, k1, obs, 4))


def test_imitation_learns_the_behaviour_policy():
    key_obs, key_init, key_fit = jax.random.split(jax.random.key(2), 3)
    obs = jax.random.normal(key_obs, (1000, 2))
    actions = jnp.where(obs[:, 0] > 1.0, 2, (obs[:, 0] + obs[:, 1] > 0).astype(jnp.int32))
    policy = MLPProposal(num_actions=3, obs_dim=2, hidden_sizes=(16,))
    params, losses = fit_imitation(policy, policy.init(key_init, obs=obs), key_fit, obs, actions,
                                   num_steps=400, batch_size=128)
    accuracy = float(jnp.mean(jnp.argmax(policy.logits(params, obs), -1) == actions))
    assert accuracy > 0.9 and float(losses[-20:].mean()) < float(losses[:20].mean())


def test_policy_gradient_learns_the_action_t_prefers_through_w():
    # Action a moves x0 by MEANS[a] (plus a per-world spread); T = x0: action 2 is best in every world.
    means = np.array([0.0, 0.5, 1.0])
    w = np.zeros((3, 2 + 3, 2))
    w[:, 2:, 0] = means + 0.1 * np.array([[-1.0], [0.0], [1.0]])
    models = PlanningModels(world=linear_draws(w), terminal=linear_draws(np.ones((3, 1, 1))),
                            terminal_columns=(0,), num_actions=3)
    policy = MLPProposal(num_actions=3, obs_dim=2, hidden_sizes=(8,))
    key_obs, key_init, key_fit = jax.random.split(jax.random.key(3), 3)
    start = jax.random.normal(key_obs, (256, 2))
    params, returns = fit_policy_gradient(policy, policy.init(key_init), key_fit, models, start,
                                          num_steps=150, horizon=2, batch_size=128, entropy_coef=0.0)
    assert float(jnp.mean(policy.probs(params, start)[:, 2])) > 0.8
    assert float(returns[-10:].mean()) > float(returns[:10].mean())
