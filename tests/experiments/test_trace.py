"""The anatomy of a decision: `priorguard trace` replays a run's own episode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from priorguard.experiments import load_spec, parse_override
from priorguard.experiments.runner import run_experiment
from priorguard.experiments.trace import trace_episode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_sizes import TINY  # noqa: E402

INSTRUMENTAL_TINY = ["instrumental.horizon=2", "instrumental.rollouts=2", "instrumental.inference.steps=20"]


def _tiny(name: str, point: int):
    spec = load_spec(name)
    first = list(spec.sweep_points())[point]
    spec = spec.model_copy(update={"sweep": {}}).with_overrides(first)
    extra = INSTRUMENTAL_TINY if spec.instrumental is not None else []
    return spec.with_overrides(dict(parse_override(o) for o in (*TINY, *extra)))


@pytest.fixture(scope="module")
def coin():
    spec = _tiny("coin-shift", 1)  # the coin-relative prior
    return spec, run_experiment(spec, 0)


def test_trace_is_the_runs_own_episode(coin):
    spec, art = coin
    values = np.asarray(art.curves["deploy_values"])  # [steps, episodes]
    for episode in range(spec.data.deploy_episodes):
        tr = trace_episode(spec, 0, episode=episode)
        assert tr["return"] == pytest.approx(values[:, episode].sum())
        assert tr["decisions"], "an episode has at least one decision"
        for d in tr["decisions"]:
            a = int(d["action"])
            # the planner never takes a vetoed action but as the declared fallback
            assert not d["vetoed"][a] or (d["fallback"] and a == spec.planner.veto.fallback)
            assert d["fallback"] == all(d["vetoed"])
            assert np.isclose(sum(d["a_prob"]), 1.0)
            assert len(d["t_mean"]) == len(d["search_visits"]) == 3
            # the one-step value the veto checks is T + discount * I at W's predicted state
            np.testing.assert_allclose(d["value_mean"], np.asarray(d["t_mean"]) + 0.95 * np.asarray(d["i_mean"]),
                                       rtol=1e-6, atol=1e-6)


def _cli(*args):
    import subprocess

    return subprocess.run([sys.executable, "-m", "priorguard.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_trace_cli_writes_json_and_figure(tmp_path):
    sets = [x for o in (*TINY, *INSTRUMENTAL_TINY) for x in ("--set", o)]
    out = tmp_path / "trace.json"
    r = _cli("trace", "coin-shift", "--point", "1", "--episode", "1", "--out", out, "--feature", "coin_dx", *sets)
    assert r.returncode == 0, r.stderr
    tr = json.loads(out.read_text())
    assert tr["episode"] == 1 and tr["action_names"] == ["left", "stay", "right"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "vetoed" in r.stdout or "taken" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--episode", "99"], "--episode must be in 0 .. 19"),
    (["--point", "5"], "--point must be in 0 .. 2"),
    (["--feature", "coin_y"], "allowed: agent_x, coin_x, coin_dx, at_end"),
    (["--split", "test"], "--split must be 'deploy' or 'train'"),
    (["--out", "/nonexistent/dir/t.json"], "does not exist"),
])
def test_trace_cli_rejects_bad_options(args, message):
    r = _cli("trace", "coin-shift", *args)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def test_trace_rejects_an_episode_outside_the_batch():
    spec = _tiny("coin-shift", 1)  # refused before anything runs: no need for the module's run
    with pytest.raises(ValueError, match="episode must be in 0 .. 1"):
        trace_episode(spec, 0, episode=spec.data.deploy_episodes)
