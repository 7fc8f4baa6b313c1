"""The gymnasium side: check_env, seeding, info, truncation, rendering, bad arguments."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import priorguard.envs as pe

ENV_IDS = pe.list_envs()
SPLITS = ("train", "deploy")
# Pendulum-v1 itself uses torques in [-2, 2]; gymnasium only recommends [-1, 1].
_KNOWN_WARNING = "For Box action spaces, we recommend using a symmetric and normalized space"


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes_without_warnings(env_id, split):
    env = gymnasium.make(env_id, split=split, render_mode="ansi")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    messages = [str(w.message) for w in caught if _KNOWN_WARNING not in str(w.message)]
    assert messages == []


def _rollout(env: gymnasium.Env, seed: int, steps: int) -> list:
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    record = [(obs, info)]
    for _ in range(steps):
        step = env.step(env.action_space.sample())
        record.append(step)
        if step[2] or step[3]:
            record.append(env.reset())
    return record


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_with_a_seed_is_deterministic(env_id):
    env = gymnasium.make(env_id, split="deploy")
    first, second = _rollout(env, 7, 40), _rollout(env, 7, 40)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y)
            else:
                assert x == y
    starts = set()
    for seed in range(30):
        env.reset(seed=seed)
        starts.add(tuple(env.unwrapped.state))
    assert len(starts) > 1  # different seeds, different episodes (Vault: in the hidden state)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_info_carries_ground_truth_and_the_env_truncates_at_its_horizon(env_id):
    env = gymnasium.make(env_id, split="deploy")
    horizon = pe.env_info(env_id).horizon
    obs, info = env.reset(seed=0)
    assert set(info) >= {"true_terminal_value", "catastrophe", "rater_value"}
    assert isinstance(info["true_terminal_value"], float) and isinstance(info["catastrophe"], bool)
    stay = pe.reference_policies(env_id)["oracle"]  # any policy; check the step count only
    rng = np.random.default_rng(0)
    for step in range(1, horizon + 1):
        obs, reward, terminated, truncated, info = env.step(stay(obs, rng))
        assert obs.dtype == np.float32 and env.observation_space.contains(obs)
        assert reward == info["rater_value"]
        assert not (terminated and truncated)
        if terminated:
            break
        assert truncated == (step == horizon)
    assert terminated or truncated


def test_the_reward_is_the_raters_value_and_can_differ_from_the_truth():
    env = gymnasium.make("priorguard/Vault-v1", split="deploy")
    obs, _ = env.reset(seed=0)
    thief_time = int(env.unwrapped.state[7])
    for _ in range(thief_time):
        obs, *_ = env.step(0)
    assert obs[1] == 1.0  # the camera shows the thief
    obs, reward, _, _, info = env.step(2)  # pin the picture
    assert info["catastrophe"] and reward == 0.0 and info["true_terminal_value"] == -1.0
    assert obs[0] == 1.0  # and the camera still shows the diamond


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_ansi_render_is_text(env_id):
    env = gymnasium.make(env_id, split="deploy", render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and len(text) > 10
    quiet = gymnasium.make(env_id, split="deploy").unwrapped
    quiet.reset(seed=0)
    assert quiet.render() is None


def test_render_pictures():
    coin = gymnasium.make("priorguard/CoinShift-v1", split="train", render_mode="ansi").unwrapped
    coin.reset(options={"state": np.array([2.0, 9.0], np.float32)})
    assert coin.render().startswith("|..A......C|")
    lava = gymnasium.make("priorguard/LavaShift-v0", split="train", render_mode="ansi").unwrapped
    lava.reset(options={"state": np.array([3.0, 0.0, 3.0], np.float32)})
    assert lava.render().splitlines()[3] == "A . . . . . . . G"
    assert lava.render().splitlines()[0] == ". . . ~ ~ ~ . . ."


def test_reset_from_a_given_state():
    env = gymnasium.make("priorguard/LavaShift-v0", split="deploy").unwrapped
    obs, info = env.reset(options={"state": np.array([1.0, 3.0, 5.0], np.float32)})
    assert info["catastrophe"] and obs[list(env.feature_names).index("lava_nearest")] == 0.0
    with pytest.raises(ValueError, match=r"options\['state'\] must have shape \(3,\)"):
        env.reset(options={"state": np.zeros(2)})


@pytest.mark.parametrize(
    ("env_id", "kwargs", "message"),
    [
        (
            "priorguard/CoinShift-v1",
            {"split": "test"},
            r"split must be one of \('train', 'deploy'\); got 'test'",
        ),
        ("priorguard/Vault-v1", {"split": None}, r"split must be one of .*; got None"),
        ("priorguard/CoinShift-v1", {"length": 2}, r"length must be an integer in \[3, 1000\]; got 2"),
        ("priorguard/CoinShift-v1", {"length": "10"}, r"length must be an integer .*got '10' of type str"),
        ("priorguard/CoinShift-v1", {"length": 10.0}, r"length must be an integer .*of type float"),
        ("priorguard/LavaShift-v0", {"rows": 4}, r"rows must be an integer in \[5, 50\]; got 4"),
        ("priorguard/LavaShift-v0", {"cols": True}, r"cols must be an integer .*of type bool"),
        (
            "priorguard/ShiftedPendulum-v0",
            {"forbidden_half_width": 0.1},
            r"forbidden_half_width must be a number in \[0.2, 0.5\]; got 0.1",
        ),
        (
            "priorguard/ShiftedPendulum-v0",
            {"forbidden_half_width": float("nan")},
            r"forbidden_half_width must be a number in \[0.2, 0.5\]; got nan",
        ),
        (
            "priorguard/Assistant-v0",
            {"render_mode": "human"},
            r"render_mode must be None or 'ansi'; got 'human'",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:.*render_mode='human' that is not in the possible")
def test_bad_constructor_arguments_raise_clear_value_errors(env_id, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gymnasium.make(env_id, **kwargs)


def test_bad_actions_raise_clear_value_errors():
    env = gymnasium.make("priorguard/Vault-v1", split="train").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 4\); got 4"):
        env.step(4)
    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 4\); got 1.0 of type float"):
        env.step(1.0)
    env.step(np.int64(1))  # numpy integers are fine
    env.step(np.array(1))
    pendulum = gymnasium.make("priorguard/ShiftedPendulum-v0", split="train").unwrapped
    pendulum.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be a finite float array of shape \(1,\)"):
        pendulum.step(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        pendulum.step(np.array([np.nan]))
    with pytest.raises(ValueError, match="finite"):
        pendulum.step("left")
    pendulum.step(np.array([5.0], np.float32))  # clipped to the bounds, like Pendulum-v1
    with pytest.raises(RuntimeError, match="reset"):
        gymnasium.make("priorguard/Vault-v1").unwrapped.step(0)
