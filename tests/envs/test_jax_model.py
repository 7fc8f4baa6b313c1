"""The JAX models: agreement with gymnasium state by state, jit/vmap, ranges, errors."""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import priorguard.envs as pe
from priorguard.envs.base import SCALAR

ENV_IDS = pe.list_envs()
SPLITS = ("train", "deploy")
PENDULUM = "priorguard/ShiftedPendulum-v0"


def _angle_columns(env_id: str, names: tuple[str, ...]) -> list[int]:
    """Columns holding wrapped angles: compared modulo 2 pi (pi and -pi are the same angle)."""
    if env_id != PENDULUM:
        return []
    return [i for i, n in enumerate(names) if n in ("theta", "forbidden_dtheta")]


def _assert_close(env_id: str, actual, expected, angle_columns: list[int]) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if env_id != PENDULUM:  # integer-valued gridworlds and bandits: exact
        np.testing.assert_array_equal(actual, expected)
        return
    difference = actual - expected
    for column in angle_columns:
        difference[..., column] = (difference[..., column] + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(difference, 0.0, atol=2e-5)


def _record(env_id: str, split: str, episodes: int):
    """Run gymnasium with a mix of reference policies; record every transition."""
    env = gymnasium.make(env_id, split=split).unwrapped
    policies = pe.reference_policies(env_id)
    names = ("random", "behaviour", "oracle", "proxy")
    rng = np.random.default_rng(1)
    rec = {k: [] for k in ("state", "action", "next", "obs", "value", "rater", "catastrophe", "terminal")}
    starts, start_obs = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        starts.append(env.state)
        start_obs.append(obs)
        policy = policies[names[episode % len(names)]]
        while True:
            action = policy(obs, rng)
            rec["state"].append(env.state)
            obs, _, terminated, truncated, info = env.step(action)
            rec["action"].append(action)
            rec["next"].append(env.state)
            rec["obs"].append(obs)
            rec["value"].append(info["true_terminal_value"])
            rec["rater"].append(info["rater_value"])
            rec["catastrophe"].append(info["catastrophe"])
            rec["terminal"].append(terminated)
            if terminated or truncated:
                break
    arrays = {k: np.asarray(v) for k, v in rec.items()}
    return np.asarray(starts), np.asarray(start_obs), arrays


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_jax_model_agrees_with_gymnasium_on_trajectories(env_id, split):
    episodes = 8 if env_id == PENDULUM else 24
    starts, start_obs, rec = _record(env_id, split, episodes)
    model = pe.jax_model(env_id, split)

    def transition(state, action, key):
        after = model.step(state, action, key)
        return (
            after,
            model.observe(after),
            model.terminal_value(after),
            model.rater_value(after),
            model.catastrophe(after),
            model.is_terminal(after),
        )

    keys = jax.random.split(jax.random.key(0), len(rec["action"]))
    actions = rec["action"].astype(np.float32) if model.num_actions is None else rec["action"]
    after, obs, value, rater, catastrophe, terminal = jax.jit(jax.vmap(transition))(
        rec["state"], actions, keys
    )
    for array in (after, obs, value, rater):
        assert array.dtype == jnp.float32
    state_angles = [0] if env_id == PENDULUM else []
    obs_angles = _angle_columns(env_id, model.feature_names)
    _assert_close(env_id, after, rec["next"], state_angles)
    _assert_close(env_id, obs, rec["obs"], obs_angles)
    # values: float32 in JAX, Python floats in gymnasium
    np.testing.assert_allclose(value, rec["value"], rtol=1e-6, atol=1e-5 if env_id == PENDULUM else 0)
    np.testing.assert_allclose(rater, rec["rater"], rtol=1e-6, atol=1e-5 if env_id == PENDULUM else 0)
    np.testing.assert_array_equal(catastrophe, rec["catastrophe"])
    np.testing.assert_array_equal(terminal, rec["terminal"])
    _assert_close(env_id, jax.vmap(model.observe)(starts), start_obs, obs_angles)
    if env_id == "priorguard/Vault-v1" and split == "deploy":
        assert (rec["value"] != rec["rater"]).any()  # the trajectories include tampering


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_both_backends_draw_the_same_states_from_the_same_noise(env_id, split):
    dynamics = pe.jax_model(env_id, split).dynamics
    rng = np.random.default_rng(2)
    for size, draw in (
        (dynamics.reset_noise_size, dynamics.initial_state),
        (dynamics.sample_noise_size, dynamics.random_state),
    ):
        noise = rng.random((200, size), dtype=np.float32)
        noise[0], noise[1] = 0.0, np.nextafter(np.float32(1), np.float32(0))  # the edges of [0, 1)
        expected = np.stack([draw(SCALAR, u.tolist()) for u in noise])
        actual = jax.jit(jax.vmap(lambda u, draw=draw: draw(jnp, u)))(noise)
        _assert_close(env_id, actual, expected, [0] if env_id == PENDULUM else [])


@functools.cache
def _audit_batch(env_id: str) -> dict[str, dict[str, np.ndarray]]:
    """Per split: sampled and start states, and one step of random actions from each.

    Both splits run in one jitted call (XLA compiles are the slow part of these tests).
    """
    models = {split: pe.jax_model(env_id, split) for split in SPLITS}
    n = 512
    rng = np.random.default_rng(3)
    num_actions = models["train"].num_actions
    if num_actions is None:
        actions = rng.uniform(-3.0, 3.0, (2 * n, 1)).astype(np.float32)
    else:
        actions = rng.integers(0, num_actions, 2 * n)

    @jax.jit
    def run(keys, actions):
        out = {}
        for split, model in models.items():
            states = jnp.concatenate(
                [jax.vmap(model.sample_state)(keys[:n]), jax.vmap(model.reset)(keys[n:])]
            )
            after = jax.vmap(model.step)(states, actions, keys)
            out[split] = {
                "states": states,
                "after": after,
                "obs": jax.vmap(model.observe)(states),
                "obs_after": jax.vmap(model.observe)(after),
                "terminal": jax.vmap(model.is_terminal)(states),
                "catastrophe": jax.vmap(model.catastrophe)(states),
            }
        return out

    result = run(jax.random.split(jax.random.key(3), 2 * n), actions)
    return jax.tree_util.tree_map(np.asarray, result)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sampled_and_stepped_states_observe_inside_the_feature_ranges(env_id, split):
    info = pe.env_info(env_id)
    low, high = np.array(list(info.feature_ranges.values()), np.float32).T
    batch = _audit_batch(env_id)[split]
    for obs in (batch["obs"], batch["obs_after"]):
        assert obs.dtype == np.float32 and obs.shape == (1024, len(info.feature_names))
        assert (obs >= low).all() and (obs <= high).all()
    # the sampled states are broad: every feature takes more than one value
    assert (batch["obs"][:512].std(axis=0) > 0).all()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_terminal_states_are_absorbing(env_id):
    batch = _audit_batch(env_id)["deploy"]
    terminal = batch["terminal"]
    if env_id == "priorguard/CoinShift-v1":  # a continuing task: no terminal states, the coin cell is absorbing
        assert not terminal.any()
        terminal = batch["states"][:, 0] == batch["states"][:, 1]
    assert terminal.any()
    np.testing.assert_array_equal(batch["after"][terminal], batch["states"][terminal])
    if env_id != "priorguard/Vault-v1":  # a theft does not end the Vault episode; the sale does
        assert terminal[batch["catastrophe"]].all()


def test_model_is_a_frozen_equinox_module_and_checks_its_inputs():
    model = pe.jax_model("priorguard/LavaShift-v0", "train")
    assert isinstance(model, eqx.Module)
    assert jax.tree_util.tree_leaves(model) == []  # all configuration is static
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.dynamics = None  # type: ignore[misc]
    state = model.reset(jax.random.key(0))
    with pytest.raises(ValueError, match=r"state must have shape \(3,\)"):
        model.observe(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="action must be a scalar"):
        model.step(state, jnp.array([1, 2]), jax.random.key(1))
    with pytest.raises(Exception, match="action out of range"):
        jax.jit(model.step)(state, 7, jax.random.key(1)).block_until_ready()
    # without the range check an out-of-range action is not caught, and a batched step
    # lowers without the host callback that keeps a program out of the compilation cache
    unchecked = functools.partial(model.step, check_action=False)
    jax.jit(unchecked)(state, 7, jax.random.key(1)).block_until_ready()
    batch = (jnp.stack([state, state]), jnp.array([0, 1]), jax.random.split(jax.random.key(1), 2))
    assert "callback" in jax.jit(jax.vmap(model.step)).lower(*batch).as_text()
    assert "callback" not in jax.jit(jax.vmap(unchecked)).lower(*batch).as_text()
    pendulum = pe.jax_model(PENDULUM, "train")
    with pytest.raises(ValueError, match=r"action must have shape \(1,\)"):
        pendulum.step(pendulum.reset(jax.random.key(0)), jnp.zeros(2), jax.random.key(1))
    # a torque beyond the bounds is clipped, as in Pendulum-v1
    start = pendulum.reset(jax.random.key(0))
    np.testing.assert_array_equal(
        pendulum.step(start, jnp.array([9.0]), jax.random.key(1)),
        pendulum.step(start, jnp.array([2.0]), jax.random.key(1)),
    )


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_numpy_backend_agrees_with_the_scalar_backend(env_id):
    """``Dynamics`` methods also run on numpy float32 arrays (used by the experiment runner)."""
    dynamics = pe.jax_model(env_id, "deploy").dynamics
    rng = np.random.default_rng(5)
    angles = [0] if env_id == PENDULUM else []
    for _ in range(100):
        noise = rng.random(dynamics.sample_noise_size, dtype=np.float32)
        state = dynamics.random_state(np, noise)
        assert state.dtype == np.float32
        _assert_close(env_id, state, dynamics.random_state(SCALAR, noise.tolist()), angles)
        values = state.tolist()
        if dynamics.action_kind == "discrete":
            action, scalar_action = int(rng.integers(dynamics.num_actions)), None
        else:
            action = rng.uniform(-2, 2, 1).astype(np.float32)
            scalar_action = action.tolist()
        after = dynamics.transition(np, state, action, np.zeros(0, np.float32))
        expected = dynamics.transition(SCALAR, values, action if scalar_action is None else scalar_action, [])
        _assert_close(env_id, after, expected, angles)
        _assert_close(
            env_id,
            dynamics.observe(np, state),
            dynamics.observe(SCALAR, values),
            _angle_columns(env_id, dynamics.feature_names),
        )
        for method in ("terminal_value", "rater_value", "catastrophe", "is_terminal"):
            on_numpy = getattr(dynamics, method)(np, state)
            on_scalars = getattr(dynamics, method)(SCALAR, values)
            np.testing.assert_allclose(float(on_numpy), float(on_scalars), rtol=1e-6, atol=1e-5)
