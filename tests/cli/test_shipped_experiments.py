"""Every shipped experiment end to end, at tiny size, through the CLI in a subprocess."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from tiny_sizes import tiny_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
from record import differences, golden_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))

TIMING = ("_s",)


def run_cli(name, out):
    return subprocess.run([sys.executable, "-m", "priorguard.cli", "run", name, "--out", str(out), "--seed", "0",
                           *tiny_args(name)], capture_output=True, text=True, timeout=900)


def metrics_of(out):
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1
    m = json.loads((runs[0] / "metrics.json").read_text())
    return runs[0], {k: v for k, v in m.items() if not k.endswith(TIMING)}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiment_runs_end_to_end(name, tmp_path):
    r = run_cli(name, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    folder, m = metrics_of(tmp_path)
    for key in ("regret", "catastrophe_rate", "veto_rate", "train_false_veto_rate", "terminal_coverage90_train",
                "terminal_epistemic_auroc", "oracle_return", "proposal_alone_regret", "checked_regret", "audit_alone_rate", "audit_alone_upper", "train_return"):
        assert key in m
    assert ("train_regret" in m) == (m["oracle_return"] is not None)  # the planner on the train split
    assert 0.0 <= m["catastrophe_rate"] <= 1.0 and 0.0 <= m["train_catastrophe_rate"] <= 1.0
    # deploy episodes split by whether their start lies in the range of T's training inputs
    frac = m["deploy_in_range_fraction"]
    assert 0.0 <= frac <= 1.0
    assert (m["regret_in_range"] is None) == (frac == 0.0)  # null: no episode in that part
    assert (m["regret_out_of_range"] is None) == (frac == 1.0)
    for who in ("no_veto_regret", "proposal_alone_regret"):
        assert (m[f"{who}_in_range"] is None) == (frac == 0.0) and (m[f"{who}_out_of_range"] is None) == (frac == 1.0)
    assert (folder / "spec.toml").is_file() and (folder / "terminal.nc").is_file() and (folder / "world.nc").is_file()
    from priorguard.analysis.diagnostics import read_datatree

    t = read_datatree(folder / "terminal.nc")  # named as prior-check names T: output "value", data "terminal.y"
    assert list(t["observed_data"]["output"].values) == ["value"] and "terminal.y" in t["prior_predictive"]
    w = read_datatree(folder / "world.nc")  # one model's data, factored or not: ArviZ needs no var_name
    assert list(w["observed_data"].data_vars) == ["world.y"] and list(w["log_likelihood"].data_vars) == ["world.y"]
    has_d = "[termination]" in (ROOT / "experiments" / f"{name}.toml").read_text()
    assert (folder / "termination.nc").is_file() == has_d
    if has_d:  # D's fit is scored on held-out train states and on deploy
        assert 0.0 <= m["termination_brier_train"] <= 1.0 and 0.0 <= m["termination_brier_deploy"] <= 1.0
    has_i = "[instrumental]" in (ROOT / "experiments" / f"{name}.toml").read_text()
    for split in ("train", "deploy"):  # I against A's returns in the true environment
        for level in (50, 90):
            key = f"instrumental_coverage{level}_{split}"
            assert (key in m) == has_i and (not has_i or 0.0 <= m[key] <= 1.0)
    tamper = name == "vault"  # the one environment whose rater's view can be tampered with
    for who in ("", "no_veto_", "checked_", "proposal_alone_", "oracle_"):
        assert (f"{who}tampering_rate" in m) == tamper and (f"{who}rater_gap" in m) == tamper
    if tamper:
        assert m["oracle_tampering_rate"] == 0.0 and m["oracle_rater_gap"] == 0.0
        assert 0.0 <= m["tampering_rate"] <= 1.0 and m["rater_gap"] >= 0.0
    assert "regret" in r.stdout and ("tampering_rate" in r.stdout) == tamper  # the results table
    # every number is what this experiment computed before the redesign moved code (tests/golden/)
    diff = differences(golden_metrics("tiny", name, 0), m)
    assert not diff, f"{name} changed:\n" + "\n".join(diff)


def run_with_i_targets(out, targets):
    """coin-shift at tiny size with ``instrumental.targets = targets``: its run folder and metrics."""
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "run", "coin-shift", "--out", str(out), "--seed",
                        "0", *tiny_args("coin-shift", f"instrumental.targets={targets}")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    folder, m = metrics_of(out)
    assert f'targets = "{targets}"' in (folder / "spec.toml").read_text()
    return folder, m


def test_instrumental_by_fitted_value_iteration_runs_end_to_end(tmp_path):
    folder, _ = run_with_i_targets(tmp_path, "fvi")
    # I's regression targets (its observed data) are one-step backups, not the Monte-Carlo returns
    from priorguard.analysis.diagnostics import read_datatree

    mc = tmp_path / "mc"
    assert run_cli("coin-shift", mc).returncode == 0
    mc_folder, _ = metrics_of(mc)
    assert mc_folder.name != folder.name  # a different spec, a different run id
    y_fvi, y_mc = (np.asarray(read_datatree(f / "instrumental.nc")["observed_data"]["instrumental.y"])
                   for f in (folder, mc_folder))
    assert y_fvi.shape == y_mc.shape and np.all(np.isfinite(y_fvi)) and not np.allclose(y_fvi, y_mc)


def test_same_spec_and_seed_give_identical_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("lava-shift", a).returncode == 0
    assert run_cli("lava-shift", b).returncode == 0
    fa, ma = metrics_of(a)
    fb, mb = metrics_of(b)
    assert fa.name == fb.name  # the run id is a hash of spec, seed and env version
    assert ma == mb


def test_bad_override_writes_nothing(tmp_path):
    out = tmp_path / "store"
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "run", "coin-shift", "--out", str(out),
                        "--set", "planner.proposals=-3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "planner.proposals" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_instrumental_from_the_logged_returns_runs_end_to_end(tmp_path):
    folder, m = run_with_i_targets(tmp_path, "data_returns")
    assert 0.0 <= m["instrumental_coverage90_train"] <= 1.0
    from priorguard.analysis.diagnostics import read_datatree
    from priorguard.experiments import load_spec

    ispec = load_spec(folder / "spec.toml").instrumental
    y = np.asarray(read_datatree(folder / "instrumental.nc")["observed_data"]["instrumental.y"]).reshape(-1)
    # coin-shift's labels are 0 or 1 (on the coin): each target is a discounted count of steps on it
    bound = sum(ispec.discount**k for k in range(ispec.horizon))
    assert np.all((y >= -1e-9) & (y <= bound + 1e-9)) and y.min() < 1e-9 < y.max()


def test_a_run_of_one_point_is_stored_as_that_sweep_point(tmp_path):
    """`run --point 1` into a sweep's folder records the point's overrides and gets the
    sweep's run id (so the report finds the point, not a made-up "base"); a --set is
    recorded beside the point's fields and gives another run."""
    from priorguard.cli import _at_point, _load
    from priorguard.experiments.sweep import tasks_for

    swept = {(t.seed, repr(sorted(t.overrides.items()))): t.run_id for t in tasks_for(_load("coin-shift"), tmp_path)}
    one = tasks_for(_at_point("coin-shift", 1, None, as_sweep=True), tmp_path)
    assert one and all(t.overrides for t in one)
    assert all(swept[(t.seed, repr(sorted(t.overrides.items())))] == t.run_id for t in one)
    changed = tasks_for(_at_point("coin-shift", 1, ["planner.veto.alpha=0.1"], as_sweep=True), tmp_path)
    assert all(t.overrides["planner.veto.alpha"] == 0.1 and t.run_id not in swept.values() for t in changed)
    assert {k for k in changed[0].overrides if k != "planner.veto.alpha"} == set(one[0].overrides)


def test_run_picks_a_sweep_point_and_its_set_wins_over_the_point(tmp_path):
    """`run --point 2` runs coin-shift's even-offset prior; a --set of a field the point also
    sets wins (here: T without the symmetry, I keeping it). The spec `run` resolves is the
    one `_at_point` returns (every shipped run above goes through it); an out-of-range
    point exits 2 before anything runs."""
    from priorguard.cli import _at_point

    spec = _at_point("coin-shift", 2, ["terminal.kernel.even=[]"]).to_dict()
    assert spec["terminal"]["features"] == spec["instrumental"]["features"] == ["coin_dx"]  # the point's
    assert spec["terminal"]["kernel"]["even"] == [] and spec["instrumental"]["kernel"]["even"] == ["coin_dx"]
    assert _at_point("coin-shift", 0, None).terminal.features == ["agent_x"]
    bad = subprocess.run([sys.executable, "-m", "priorguard.cli", "run", "coin-shift", "--out", str(tmp_path / "b"),
                          "--point", "3"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--point must be in 0 .. 2" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr and not (tmp_path / "b" / "runs").exists()
