"""MiniGrid adapters: features in the agent's frame, a BFS oracle that never steps into lava, the rater's label."""

import gymnasium
import jax
import numpy as np
import pytest

import minigrid  # noqa: F401 -- the [minigrid] extra, installed with [dev]: CI runs these

from priorguard.envs import minigrid_adapters as mg
from priorguard.experiments.catalog import load_spec
from priorguard.experiments.data import collect

IDS = ["MiniGrid-DistShift1-v0", "MiniGrid-DistShift2-v0", "MiniGrid-LavaGapS5-v0", "MiniGrid-LavaGapS7-v0"]


def episode(env_id, policy, seed, max_steps=60):
    env = gymnasium.make(env_id, max_steps=max_steps)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    total, lava = 0.0, False
    for _ in range(max_steps):
        action = policy(None, rng, env.unwrapped)
        obs, reward, terminated, truncated, info = env.step(action)
        total += mg.rater(obs, reward, info, env.unwrapped)
        lava |= mg.in_lava(obs, info, env.unwrapped)
        if terminated or truncated:
            break
    return total, lava, terminated


@pytest.mark.parametrize("env_id", IDS)
def test_the_oracle_reaches_the_goal_without_touching_lava(env_id):
    for seed in range(3):
        total, lava, terminated = episode(env_id, mg.oracle, seed)
        assert terminated and not lava and total > 0.5


def test_stepping_into_lava_is_labelled_minus_one_and_is_a_catastrophe():
    env = gymnasium.make("MiniGrid-DistShift1-v0")
    obs, info = env.reset(seed=0)
    u = env.unwrapped
    f = mg.features(obs, info, u)
    # the agent starts at (1, 1) facing east; the lava strip starts at (3, 1)
    assert (f["agent_x"], f["agent_y"], f["dir_x"], f["dir_y"]) == (1.0, 1.0, 1.0, 0.0)
    assert f["lava_ahead"] == 0.0 and f["lava_here"] == 0.0 and f["goal_dx"] == 6.0 and f["goal_dy"] == 0.0
    assert f["goal_here"] == 0.0 and f["goal_ahead"] == 0.0
    obs, reward, *_ , info = env.step(2)  # forward to (2, 1): lava ahead now, a wall to the left
    f = mg.features(obs, info, u)
    assert f["lava_ahead"] == 1.0 and f["lava_right"] == 0.0 and f["lava_left"] == 0.0
    obs, reward, terminated, _, info = env.step(2)  # into the lava
    assert terminated and mg.in_lava(obs, info, u) and mg.rater(obs, reward, info, u) == -1.0
    assert mg.features(obs, info, u)["lava_here"] == 1.0


def test_behaviour_explores_and_sometimes_steps_into_lava():
    outcomes = [episode("MiniGrid-DistShift1-v0", mg.behaviour, seed) for seed in range(40)]
    lava = sum(o[1] for o in outcomes)
    assert 0 < lava < 40


@pytest.mark.parametrize("name", ["minigrid-distshift", "minigrid-lavagap"])
def test_the_shipped_minigrid_specs_load_and_collect(name):
    spec = load_spec(name)
    source = spec.source()
    info = source.info
    assert info.num_actions == 7 and info.action_names[2] == "forward" and info.has_catastrophes
    assert "oracle" not in source.unavailable and "model" in source.unavailable
    data = collect(source, "train", 3, "behaviour", jax.random.key(0))
    assert data.obs.shape[1] == len(info.feature_names) == 13
    assert set(np.unique(data.action)) <= {0, 1, 2}


def test_goal_features_mark_the_goal_ahead_and_underfoot():
    env = gymnasium.make("MiniGrid-LavaGapS5-v0")
    obs, info = env.reset(seed=0)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    seen_ahead = False
    for _ in range(30):
        f = mg.features(obs, info, u)
        seen_ahead |= f["goal_ahead"] == 1.0
        obs, reward, terminated, truncated, info = env.step(mg.oracle(None, rng, u))
        if terminated:
            break
    assert seen_ahead and mg.features(obs, info, u)["goal_here"] == 1.0 and reward > 0
