"""The termination model D: what follows a state where the episode ends counts for nothing.

Every place that looks past a state (one-step values, MCTS, CEM returns, the
policy-gradient proposal's returns, I's Monte-Carlo targets) weights the future
by ``1 - clip(D, 0, 1)``. Each test has a closed form that differs with and
without D.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from planner_worlds import linear_draws, table_draws, tree_world

from priorguard.experiments.data import Transitions, termination_data
from priorguard.experiments.instrumental import mc_returns
from priorguard.models.base import FunctionDraws
from priorguard.planners import (
    MLPProposal,
    PlanningModels,
    UniformProposal,
    fit_policy_gradient,
    plan_mcts,
    sequence_returns,
)

NUM_WORLDS = 4


def test_state_value_weights_i_by_the_probability_that_the_episode_goes_on():
    # T = x0, I = 2 x1, D = x2 (its draws leave [0, 1] and are clipped)
    models = PlanningModels(
        world=linear_draws(np.zeros((NUM_WORLDS, 3 + 2, 3))),
        terminal=linear_draws(np.ones((NUM_WORLDS, 1, 1))),
        instrumental=linear_draws(np.full((NUM_WORLDS, 1, 1), 2.0)),
        termination=linear_draws(np.ones((NUM_WORLDS, 1, 1))),
        terminal_columns=(0,), instrumental_columns=(1,), termination_columns=(2,), num_actions=2,
    )
    obs = jnp.array([[1.0, 1.0, -0.5], [1.0, 1.0, 0.25], [1.0, 1.0, 1.7]])
    going_on = np.array([1.0, 0.75, 0.0])
    expected = 1.0 + 0.5 * going_on * 2.0
    np.testing.assert_allclose(models.continuation_all_worlds(obs), np.tile(going_on, (NUM_WORLDS, 1)))
    np.testing.assert_allclose(models.state_value_all_worlds(obs, discount=0.5), np.tile(expected, (NUM_WORLDS, 1)))
    per_world = jnp.tile(obs[None], (NUM_WORLDS, 1, 1))
    np.testing.assert_allclose(models.state_value_per_world(per_world, discount=0.5),
                               np.tile(expected, (NUM_WORLDS, 1)))
    np.testing.assert_allclose(models.continuation_in_worlds(obs, jnp.array([0, 3, 1])), going_on)
    np.testing.assert_allclose(models.continuation(obs, 2), going_on)
    # without D nothing ends
    no_end = eqx.tree_at(lambda m: m.termination, models, None, is_leaf=lambda x: x is None)
    np.testing.assert_allclose(no_end.state_value_all_worlds(obs, discount=0.5)[0], [2.0, 2.0, 2.0])


def test_planning_models_check_d_at_the_boundary():
    world, terminal = linear_draws(np.zeros((NUM_WORLDS, 3, 1))), linear_draws(np.ones((NUM_WORLDS, 1, 1)))
    with pytest.raises(ValueError, match="termination_columns must be given"):
        PlanningModels(world=world, terminal=terminal, terminal_columns=(0,), num_actions=2,
                       termination=linear_draws(np.ones((NUM_WORLDS, 1, 1))))
    with pytest.raises(ValueError, match="same number of draws"):
        PlanningModels(world=world, terminal=terminal, terminal_columns=(0,), num_actions=2,
                       termination=linear_draws(np.ones((2, 1, 1))), termination_columns=(0,))


# ------------------------------------------------------------------- MCTS
# Node ids of a complete 3-ary tree (action a at node i -> node 3 i + a + 1). Action 0 reaches
# node 1 (T = 1) whose children are worth 5 each; action 1 reaches node 2 (T = 0.5) whose
# children are worth 2. Without D action 0 is worth 1 + 5; when the episode ends at node 1 it
# is worth 1, and action 1 (0.5 + 2) wins.
def tree_tables():
    t = np.zeros((NUM_WORLDS, 13))
    t[:, 1], t[:, 2] = 1.0, 0.5
    t[:, 4:7], t[:, 7:10] = 5.0, 2.0
    return t


def mcts_models(ends_at_node_1):
    ends = np.zeros((NUM_WORLDS, 13))
    ends[:, 1] = 1.0
    extra = {"termination": table_draws(ends), "termination_columns": (0,)} if ends_at_node_1 else {}
    return PlanningModels(world=tree_world(NUM_WORLDS, 3), terminal=table_draws(tree_tables()),
                          terminal_columns=(0,), num_actions=3, **extra)


@pytest.mark.parametrize("policy", ["gumbel", "muzero"])
def test_mcts_counts_nothing_after_a_state_where_the_episode_ends(policy):
    def search(models):
        return eqx.filter_jit(plan_mcts)(models, UniformProposal(3), None, jax.random.key(0), jnp.zeros((2, 1)),
                                         num_simulations=48, max_depth=2, discount=1.0, policy=policy,
                                         fallback_action=jnp.asarray(0, jnp.int32))

    blind, aware = search(mcts_models(False)), search(mcts_models(True))
    np.testing.assert_array_equal(blind.action, [0, 0])
    np.testing.assert_array_equal(aware.action, [1, 1])
    # a node's value averages its backups (its own expansion, worth 0, included): Q(0) in (1, 6]
    # without D; with D it is T at node 1 and nothing more, however often node 1 is visited
    assert np.all(np.asarray(blind.world_qvalues[:, :, 0]) > 2.5)
    np.testing.assert_allclose(aware.world_qvalues[:, :, 0], 1.0, atol=1e-12)
    assert np.all(np.asarray(aware.world_qvalues[:, :, 1]) > 1.0)


# -------------------------------------------------------------------- CEM
def _move(params, x):  # next = obs + action (2-D)
    return x[:, 2:] + params["drift"]


def _minus_square(params, x):  # T = -|x|^2
    return -jnp.sum(x**2, axis=-1, keepdims=True) + 0.0 * params["c"]


def _ends_past(params, x):  # D = 1 where x0 >= threshold
    return (x[:, :1] >= params["at"]).astype(x.dtype)


def continuous_models(ends_at=None):
    extra = ({} if ends_at is None else
             {"termination": FunctionDraws({"at": jnp.full((NUM_WORLDS, 1), ends_at)}, _ends_past),
              "termination_columns": (0, 1)})
    return PlanningModels(world=FunctionDraws({"drift": jnp.zeros((NUM_WORLDS, 2))}, _move),
                          terminal=FunctionDraws({"c": jnp.zeros((NUM_WORLDS, 1))}, _minus_square),
                          terminal_columns=(0, 1), action_low=-2 * jnp.ones(2), action_high=2 * jnp.ones(2),
                          **extra)


@pytest.mark.parametrize(("ends_at", "expected"), [(None, -1 + 0.5 * -4), (1.5, -1 + 0.5 * -4), (0.5, -1.0)])
def test_cem_returns_stop_after_the_state_where_the_episode_ends(ends_at, expected):
    # x1 = (1, 0): T = -1; x2 = (2, 0): T = -4. Ending at x2 still counts x2; ending at x1 drops x2.
    seq = jnp.array([[[[1.0, 0.0], [1.0, 0.0]]]])
    returns = sequence_returns(continuous_models(ends_at), jnp.zeros((1, 2)), seq, discount=0.5)
    np.testing.assert_allclose(returns[0, 0], expected, atol=1e-12)


# ------------------------------------------- imagined rollouts: A's returns and I's targets
def constant_models(p_end):
    # obs = [1] never moves; T = 1 everywhere; D = p_end everywhere
    return PlanningModels(world=linear_draws(np.zeros((NUM_WORLDS, 1 + 2, 1))),
                          terminal=linear_draws(np.ones((NUM_WORLDS, 1, 1))),
                          termination=linear_draws(np.full((NUM_WORLDS, 1, 1), p_end)),
                          terminal_columns=(0,), termination_columns=(0,), num_actions=2)


@pytest.mark.parametrize("p_end", [0.0, 0.3, 1.0])
def test_i_targets_weight_each_step_by_the_chance_the_episode_is_still_on(p_end):
    horizon, discount = 4, 0.9
    targets = mc_returns(constant_models(p_end), UniformProposal(2), None, jax.random.key(0), jnp.ones((3, 1)),
                         horizon=horizon, discount=discount, rollouts=4)
    expected = sum((discount * (1 - p_end)) ** t for t in range(horizon))
    np.testing.assert_allclose(targets, expected, atol=1e-12)


@pytest.mark.parametrize("p_end", [0.0, 0.5])
def test_policy_gradient_returns_stop_where_the_episode_ends(p_end):
    horizon, discount = 3, 0.8
    policy = MLPProposal(num_actions=2, obs_dim=1, hidden_sizes=(4,))
    _, returns = fit_policy_gradient(policy, policy.init(jax.random.key(1)), jax.random.key(2), constant_models(p_end),
                                     jnp.ones((8, 1)), num_steps=2, horizon=horizon, batch_size=4, discount=discount)
    expected = sum((discount * (1 - p_end)) ** t for t in range(horizon))
    np.testing.assert_allclose(returns, expected, atol=1e-12)


def test_termination_data_labels_each_seen_state_by_whether_its_episode_ended_there():
    # two episodes: 0 ends in a terminal state after 2 steps, 1 is cut by the time limit after 1
    obs = np.array([[0.0], [1.0], [10.0]])
    nxt = np.array([[1.0], [2.0], [11.0]])
    data = Transitions(obs=obs, action=np.zeros(3, int), next_obs=nxt, rater=np.zeros(3),
                       episode=np.array([0, 0, 1]), terminated=np.array([False, True, False]))
    states, ended = termination_data(data)
    np.testing.assert_array_equal(states[:, 0], [0.0, 10.0, 1.0, 2.0, 11.0])
    np.testing.assert_array_equal(ended, [0.0, 0.0, 0.0, 1.0, 0.0])


def _true_pendulum_models(with_termination: bool) -> PlanningModels:
    """ShiftedPendulum's value and catastrophe, and its swing, as (two identical) function draws.

    The swing goes on through the arc, as a W fitted to the logged episodes predicts (none of
    them goes on from inside the arc); the environment itself holds a state that entered it.
    """
    from priorguard.envs.shifted_pendulum import _GRAVITY_TERM, COST_MAX, DT, MAX_SPEED

    half_width = 0.25

    def wrap(a):
        return (a + jnp.pi) % (2 * jnp.pi) - jnp.pi

    def world(p, x):  # [cos, sin, theta_dot, theta, centre, dtheta, torque] -> change of the six features
        theta, dot, centre, torque = x[:, 3], x[:, 2], x[:, 4], jnp.clip(x[:, 6], -2.0, 2.0)
        new_dot = jnp.clip(dot + (_GRAVITY_TERM * jnp.sin(theta) + 3.0 * torque) * DT, -MAX_SPEED, MAX_SPEED)
        new = wrap(theta + new_dot * DT)
        after = jnp.stack([jnp.cos(new), jnp.sin(new), new_dot, new, centre, wrap(new - centre)], axis=1)
        return after - x[:, :6] + 0.0 * p["w"]

    def inside(theta, centre):
        return jnp.abs(wrap(theta - centre)) < half_width

    def value(p, x):  # [theta, theta_dot, centre]
        v = 1.0 - (x[:, 0] ** 2 + 0.1 * x[:, 1] ** 2) / COST_MAX
        return jnp.where(inside(x[:, 0], x[:, 2]), -10.0, v)[:, None] + 0.0 * p["w"]

    def ends(p, x):  # [theta, centre]
        return inside(x[:, 0], x[:, 1]).astype(x.dtype)[:, None] + 0.0 * p["w"]

    def draws(fn):
        return FunctionDraws({"w": jnp.zeros((2, 1))}, fn)

    extra = {"termination": draws(ends), "termination_columns": (3, 4)} if with_termination else {}
    return PlanningModels(world=draws(world), terminal=draws(value), terminal_columns=(3, 2, 4),
                          action_low=-2.0 * jnp.ones(1), action_high=2.0 * jnp.ones(1), **extra)


def _pendulum_episodes(policy, episodes: int = 4) -> tuple[np.ndarray, int]:
    """``policy(obs, t, episode) -> torque [1]`` on ShiftedPendulum's train split: returns, catastrophes."""
    import gymnasium

    import priorguard.envs  # noqa: F401  (registers the environments)

    env = gymnasium.make("priorguard/ShiftedPendulum-v0", split="train").unwrapped
    returns, crashes = [], 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=100 + ep)
        total = 0.0
        for t in range(200):
            action = np.asarray(policy(obs, t, ep), np.float32)
            obs, reward, terminated, _, _ = env.step(action)
            total += reward
            if terminated:
                crashes += 1
                break
        returns.append(total)
    return np.asarray(returns), crashes


def _cem_episodes(models: PlanningModels) -> tuple[np.ndarray, int]:
    from priorguard.planners import plan_cem

    act = eqx.filter_jit(lambda m, key, obs: plan_cem(m, key, obs, horizon=16, fallback_action=jnp.zeros(1),
                                                      num_samples=32, num_elites=4, num_iterations=3).action)
    return _pendulum_episodes(
        lambda obs, t, ep: act(models, jax.random.key(1000 * ep + t), jnp.asarray(obs, jnp.float64)[None])[0])


def test_cem_with_perfect_models_swings_through_the_arc_unless_it_knows_the_episode_ends_there():
    # ShiftedPendulum's arc is worth -10 and ends the episode. Without D, an imagined rollout
    # through the arc pays -10 a step there and then collects the upright value: with the true
    # swing (going on through the arc, as a fitted W has it) and the true value, CEM still swings
    # through it. With the true D it never does,
    # and reaches most of the oracle's return (docs/anatomy.md, "pendulum").
    from priorguard.envs.shifted_pendulum import ShiftedPendulumDynamics, shifted_pendulum_policies

    rng = np.random.default_rng(0)
    oracle_policy = shifted_pendulum_policies(ShiftedPendulumDynamics(split="train"))["oracle"]
    oracle, _ = _pendulum_episodes(lambda obs, t, ep: oracle_policy(obs, rng))
    returns, crashes = _cem_episodes(_true_pendulum_models(with_termination=False))
    returns_d, crashes_d = _cem_episodes(_true_pendulum_models(with_termination=True))
    print(f"oracle {oracle.round(1)}; CEM without D {returns.round(1)} ({crashes} in the arc); "
          f"with D {returns_d.round(1)} ({crashes_d} in the arc)")
    assert crashes >= 1
    assert crashes_d == 0
    assert returns_d.mean() >= 0.8 * oracle.mean() and returns_d.mean() > returns.mean()
