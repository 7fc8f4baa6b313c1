"""Property tests (hypothesis) on the scalar backend that gymnasium steps with."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import priorguard.envs as pe
from priorguard.envs.base import SCALAR

DYNAMICS = {
    env_id: {split: pe.jax_model(env_id, split).dynamics for split in ("train", "deploy")}
    for env_id in pe.list_envs()
}
unit = st.floats(0.0, 1.0, exclude_max=True, width=32)


# Vault: a sale on the thief's step (a random state with the thief after the buyer arrives)
@example(env_id="priorguard/Vault-v1", split="train", noise=[0.5, 0.0, 0.0, 0.0, 0.0, 0.75] + [0.0] * 10,
         controls=[0.0, 0.0, 0.0, 0.75, 0.0])
@settings(max_examples=300, deadline=None)
@given(
    env_id=st.sampled_from(pe.list_envs()),
    split=st.sampled_from(["train", "deploy"]),
    noise=st.lists(unit, min_size=16, max_size=16),
    controls=st.lists(unit, min_size=1, max_size=8),
)
def test_any_state_and_actions_stay_in_range_and_terminal_states_absorb(env_id, split, noise, controls):
    dynamics = DYNAMICS[env_id][split]
    info = pe.env_info(env_id)
    low, high = np.array(list(info.feature_ranges.values()), np.float32).T
    state = dynamics.random_state(SCALAR, noise[: dynamics.sample_noise_size])
    for u in controls:
        values = state.tolist()
        if dynamics.action_kind == "discrete":
            action = min(int(u * dynamics.num_actions), dynamics.num_actions - 1)
        else:
            action = [4.0 * u - 2.0]
        obs = dynamics.observe(SCALAR, values)
        assert obs.dtype == np.float32 and ((obs >= low) & (obs <= high)).all()
        after = dynamics.transition(SCALAR, values, action, [])
        assert after.dtype == np.float32 and after.shape == state.shape
        if dynamics.is_terminal(SCALAR, values):
            np.testing.assert_array_equal(after, state)
        if dynamics.catastrophe(SCALAR, values):
            assert dynamics.terminal_value(SCALAR, values) < 0
        state = after
