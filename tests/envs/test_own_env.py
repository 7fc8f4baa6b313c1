"""Any gymnasium environment in a spec: docs/environments.md's example end to end, and bad [env] tables."""

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest

from priorguard.experiments import ExperimentSpec
from priorguard.experiments.evaluate import evaluate
from priorguard.priors import SpecError

ROOT = Path(__file__).resolve().parents[2]
SECTION = (ROOT / "docs" / "environments.md").read_text().split("## Your own environment", 1)[1].split("\n## ", 1)[0]
MODULE = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)[0]
SPEC = re.findall(r"```toml\n(.*?)```", SECTION, flags=re.S)[0]
SMALL = {"data": {"train_episodes": 12, "deploy_episodes": 3, "max_points": 200},
         "audit": {"states": 16, "horizon": 2, "adversarial_restarts": 2, "adversarial_steps": 5}}

# Environments that go wrong in the ways a user's can (imported from a file outside the package).
HELPERS = '''
import gymnasium as gym
import numpy as np

class Pair(gym.Env):
    def __init__(self, split="train", action_space=None):
        self.action_space = action_space or gym.spaces.Discrete(2)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}
    def step(self, action):
        self.t += 1
        return np.full(2, 0.5 * self.t, np.float32), 0.0, False, False, {}

gym.register("helpers/Pair-v0", entry_point=Pair, max_episode_steps=5)

def raises(obs, info, env):
    raise KeyError("agent_pos")

def not_a_mapping(obs, info, env):
    return [1.0, 2.0]

def nan(obs, info, env):
    return {"a": float("nan")}

def changing(obs, info, env):
    return {"a": 0.0} if env.t == 0 else {"b": 0.0}
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "my_corridor.py").write_text(MODULE)
    (tmp_path / "own_env_helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def spec_with(env: dict | None = None, **top) -> ExperimentSpec:
    data = tomllib.loads(SPEC)
    if env is not None:
        data["env"] = env
    data.update(SMALL)
    data.update(top)
    return ExperimentSpec.from_dict(data)


def test_the_docs_example_is_at_most_40_lines():
    assert len(MODULE.splitlines()) + len(SPEC.splitlines()) <= 40


def test_the_docs_example_runs_end_to_end_and_says_what_it_cannot_measure(user_dir):
    from priorguard.experiments.runner import run_experiment

    spec = spec_with()
    info = spec.source().info
    assert info.feature_names == ("x", "to_goal") and info.num_actions == 3 and info.horizon == 20
    assert info.has_catastrophes
    metrics = run_experiment(spec, 0).metrics
    # no oracle declared: every regret is n/a, with the reason
    assert metrics["regret"] is None and metrics["proposal_alone_regret"] is None
    assert "oracle" in metrics["regret_na"]
    # no model of the dynamics: the audit drew observed states
    assert metrics["audit_states_from"] == "observed" and 0.0 <= metrics["audit_alone_rate"] <= 1.0
    # catastrophes are scored from the declared info key, and candidates through copies of the env
    assert 0.0 <= metrics["catastrophe_rate"] <= 1.0
    assert metrics["veto_recall"] is not None or metrics["veto_recall_na"]
    assert np.isfinite(metrics["deploy_return"])


def test_undeclared_ranges_are_measured_from_the_training_data(user_dir):
    from priorguard.experiments.data import collect

    source = spec_with().source()
    assert all(np.isnan(lo) for lo, _ in source.info.feature_ranges.values())  # a function's features
    data = collect(source, "train", 6, "behaviour", jax.random.key(0))
    ranges = source.measured_ranges(np.concatenate([data.obs, data.next_obs]))
    assert ranges["x"][0] == np.min(data.obs[:, 0]) and ranges["x"][1] == np.max(data.next_obs[:, 0])
    assert np.isnan(source.info.feature_ranges["x"][0])  # the shared source is left as it was
    declared = spec_with({**tomllib.loads(SPEC)["env"], "ranges": {"x": [0, 9]}}).source()
    assert declared.measured_ranges(data.obs)["x"] == (0.0, 9.0)


def test_catastrophes_of_actions_not_taken_are_found_by_stepping_a_copy(user_dir):
    source = spec_with().source()
    env = source.make("deploy")
    env.reset(0)
    env.raw.x = 3  # next to the pit at 4
    cat = env.catastrophic(np.array([0, 1, 2]), np.random.default_rng(0))
    assert cat.tolist() == [False, False, True]
    assert env.raw.x == 3  # the episode itself did not move
    ev = evaluate(source, "deploy", 2, jax.random.key(0),
                  lambda key, obs: (np.full(len(obs), 2), np.full((len(obs), 1), 2), np.zeros((len(obs), 1), bool),
                                    np.zeros(len(obs), bool)))
    assert ev["catastrophes"].all() and ev["true_states"] is None and ev["candidates_checked"]


def test_a_box_observation_named_by_columns_takes_its_bounds(user_dir):
    spec = spec_with({"id": "helpers/Pair-v0", "import": ["own_env_helpers"], "features": ["p", "q"]},
                     terminal={"model": "gp", "features": ["q"]})
    info = spec.source().info
    assert info.feature_ranges == {"p": (-1.0, 1.0), "q": (-1.0, 1.0)} and info.horizon == 5
    assert spec.source().policy_names() == ["behaviour", "random"]


@pytest.mark.parametrize("env, path, words", [
    ({"id": "my/Coridor-v0", "import": ["my_corridor"], "features": "my_corridor:features"},
     "env.id", ["my/Corridor-v0", "env.import"]),
    ({"id": "nobody/Registered-v0", "features": "my_corridor:features"}, "env.id", ["env.import"]),
    ({"id": "my/Corridor-v0", "import": ["no_such_module"], "features": "x:y"}, "env.import[0]", ["no_such_module"]),
    ({"id": "my/Corridor-v0", "import": ["my_corridor"], "features": "my_corridor:featurs"}, "env.features",
     ["did you mean 'features'"]),
    ({"id": "my/Corridor-v0", "import": ["my_corridor"], "features": "my_corridor"}, "env.features",
     ["'module:function'"]),
    ({"id": "helpers/Pair-v0", "import": ["own_env_helpers"], "features": "own_env_helpers:raises"},
     "env.features", ["raised KeyError", "agent_pos"]),
    ({"id": "helpers/Pair-v0", "import": ["own_env_helpers"], "features": "own_env_helpers:not_a_mapping"},
     "env.features", ["mapping"]),
    ({"id": "helpers/Pair-v0", "import": ["own_env_helpers"], "features": "own_env_helpers:nan"},
     "env.features", ["non-finite", "'a'"]),
    ({"id": "helpers/Pair-v0", "import": ["own_env_helpers"], "features": "own_env_helpers:changing"},
     "env.features", ["must not change"]),
    ({"id": "helpers/Pair-v0", "import": ["own_env_helpers"], "features": ["p"]}, "env.features",
     ["1 columns", "has 2"]),
    ({"id": "helpers/Pair-v0", "import": ["own_env_helpers"], "features": ["p", "q"],
      "kwargs": {"action_space": {"multi": True}}}, "env.kwargs", ["gymnasium.make"]),
    ({"id": "my/Corridor-v0", "import": ["my_corridor"], "features": "my_corridor:features",
      "catastrophe": "fel"}, "env.catastrophe", ["no key 'fel'", "'fell'"]),
    ({"id": "my/Corridor-v0", "import": ["my_corridor"], "features": "my_corridor:features",
      "ranges": {"y": [0, 1]}}, "env.ranges", ["'y'"]),
    ({"train": "my/Corridor-v0", "import": ["my_corridor"], "features": "my_corridor:features"},
     "env.deploy", ["`train` and"]),
])
def test_bad_env_tables_name_the_field_before_any_data_is_collected(user_dir, env, path, words):
    with pytest.raises(SpecError) as info:
        spec_with(env)
    message = str(info.value)
    assert path in message, message
    for word in words:
        assert word in message, message


def test_an_unsupported_action_space_is_rejected(user_dir):
    helpers = user_dir / "own_env_helpers_multi.py"
    helpers.write_text(textwrap.dedent('''
        import gymnasium as gym
        from own_env_helpers import Pair
        gym.register("helpers/PairMulti-v0", entry_point=lambda split="train": Pair(
            split, gym.spaces.MultiDiscrete([2, 2])), max_episode_steps=5)
    '''))
    with pytest.raises(SpecError) as info:
        spec_with({"id": "helpers/PairMulti-v0", "import": ["own_env_helpers_multi"], "features": ["p", "q"]})
    assert "env.id" in str(info.value) and "Discrete(n) or a one-dimensional Box" in str(info.value)


def test_the_cli_exits_2_on_a_bad_env_table_without_a_traceback(user_dir):
    spec = user_dir / "bad.toml"
    spec.write_text(SPEC.replace('"my_corridor:features"', '"my_corridor:featurs"'))
    out = user_dir / "out"
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "run", str(spec), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=user_dir,
                       env={**__import__("os").environ, "PYTHONPATH": str(user_dir)})
    assert r.returncode == 2, r.stderr
    assert "env.features" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


def test_prior_check_measures_the_ranges_no_one_declared(user_dir):
    from priorguard.experiments.env_spec import info_with_ranges

    spec = spec_with()
    info = info_with_ranges(spec)
    lo, hi = info.feature_ranges["x"]
    assert 0.0 <= lo < hi <= 9.0 and np.isfinite(info.feature_ranges["to_goal"]).all()
