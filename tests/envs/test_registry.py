"""Registry lookups: list_envs, env_info, jax_model, reference_policies, and their errors."""

from __future__ import annotations

import dataclasses

import gymnasium
import numpy as np
import pytest

import priorguard.envs as pe

SUITE = [
    "priorguard/CoinShift-v1",
    "priorguard/Vault-v1",
    "priorguard/Assistant-v0",
    "priorguard/LavaShift-v0",
    "priorguard/ShiftedPendulum-v0",
]
ENV_CLASSES = {
    "priorguard/CoinShift-v1": pe.CoinShiftEnv,
    "priorguard/Vault-v1": pe.VaultEnv,
    "priorguard/Assistant-v0": pe.AssistantEnv,
    "priorguard/LavaShift-v0": pe.LavaShiftEnv,
    "priorguard/ShiftedPendulum-v0": pe.ShiftedPendulumEnv,
}


def test_list_envs_is_the_suite_and_all_are_registered():
    # the suite first, in the docs' order; environments registered from outside (tests/test_extending.py) after it
    assert pe.list_envs()[:len(SUITE)] == SUITE
    assert not any(e.startswith("priorguard/") for e in pe.list_envs()[len(SUITE):])
    registered = {env_id for env_id in gymnasium.registry if env_id.startswith("priorguard/")}
    assert registered == set(SUITE)
    assert all(gymnasium.spec(env_id).max_episode_steps is None for env_id in SUITE)  # own truncation


@pytest.mark.parametrize("env_id", SUITE)
def test_env_info_matches_the_built_environment(env_id):
    info = pe.env_info(env_id)
    env = gymnasium.make(env_id, split="deploy").unwrapped
    cls = ENV_CLASSES[env_id]
    # class attributes, readable without building an env
    assert cls.feature_names == info.feature_names
    assert cls.feature_ranges == info.feature_ranges
    assert list(info.feature_ranges) == list(info.feature_names)
    assert info.env_id == env_id and info.version == int(env_id[-1]) and info.num_features == len(info.feature_names)
    low, high = np.array(list(info.feature_ranges.values()), np.float32).T
    np.testing.assert_array_equal(env.observation_space.low, low)
    np.testing.assert_array_equal(env.observation_space.high, high)
    assert info.horizon == env.horizon
    if info.action_kind == "discrete":
        assert env.action_space.n == info.num_actions == len(info.action_names)
        assert info.action_low is None and info.action_high is None
    else:
        assert info.action_kind == "continuous" and info.num_actions is None and info.action_names is None
        np.testing.assert_array_equal(env.action_space.low, info.action_low)
        np.testing.assert_array_equal(env.action_space.high, info.action_high)
        assert not info.action_low.flags.writeable


def test_env_info_is_frozen_and_follows_size_arguments():
    info = pe.env_info("priorguard/CoinShift-v1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.horizon = 3  # type: ignore[misc]
    assert info.horizon == 30 and info.feature_ranges["agent_x"] == (0.0, 9.0)
    big = pe.env_info("priorguard/CoinShift-v1", length=20)
    assert big.horizon == 60 and big.feature_ranges["coin_dx"] == (-19.0, 19.0)
    env = gymnasium.make("priorguard/CoinShift-v1", split="train", length=20).unwrapped
    assert env.feature_ranges == big.feature_ranges  # instance ranges follow the size
    assert pe.CoinShiftEnv.feature_ranges == info.feature_ranges  # class ranges stay the defaults
    assert pe.env_info("priorguard/LavaShift-v0", rows=9, cols=11).horizon == 80


@pytest.mark.parametrize(
    ("query", "closest"),
    [
        ("priorguard/CoinShit-v0", "priorguard/CoinShift-v1"),
        ("coinshift", "priorguard/CoinShift-v1"),
        ("priorguard/Lava-v0", "priorguard/LavaShift-v0"),
        ("Pendulum-v1", "priorguard/ShiftedPendulum-v0"),
        ("priorguard/Vault-v0", "priorguard/Vault-v1"),
    ],
)
def test_unknown_env_id_names_the_closest_and_lists_the_known(query, closest):
    with pytest.raises(ValueError, match="unknown env_id") as error:
        pe.env_info(query)
    message = str(error.value)
    assert f"did you mean {closest!r}" in message
    assert all(env_id in message for env_id in SUITE)


def test_lookup_errors_are_value_errors_that_name_the_argument():
    with pytest.raises(ValueError, match="env_id must be a str"):
        pe.env_info(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'deploy'\); got 'test'"):
        pe.jax_model("priorguard/Vault-v1", "test")
    with pytest.raises(ValueError, match=r"unknown argument .*\['size'\]; allowed: \['length'\]"):
        pe.env_info("priorguard/CoinShift-v1", size=4)
    with pytest.raises(ValueError, match=r"length must be an integer in \[3, 1000\]; got 2"):
        pe.jax_model("priorguard/CoinShift-v1", "train", length=2)
    with pytest.raises(ValueError, match="unknown env_id"):
        pe.reference_policies("priorguard/Nope-v0")


@pytest.mark.parametrize("env_id", SUITE)
def test_reference_policies_have_the_documented_keys_and_valid_actions(env_id):
    policies = pe.reference_policies(env_id)
    assert {"oracle", "proxy", "random", "behaviour"} <= set(policies)
    env = gymnasium.make(env_id, split="deploy").unwrapped
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for policy in policies.values():
        assert env.action_space.contains(np.asarray(policy(obs, rng), dtype=env.action_space.dtype))


def test_jax_model_metadata():
    model = pe.jax_model("priorguard/LavaShift-v0", "deploy", rows=9)
    assert model.env_id == "priorguard/LavaShift-v0" and model.split == "deploy"
    assert model.feature_names == pe.LavaShiftEnv.feature_names
    assert model.num_actions == 4 and model.state_size == 3 and model.horizon == 4 * (9 + 9)
    assert "rows=9" in repr(model)
