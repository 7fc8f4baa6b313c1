"""`priorguard prior-check`: DataTrees with prior / prior_predictive groups, plots, nothing on bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from priorguard.analysis.diagnostics import read_datatree

ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "priorguard.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_prior_check_writes_datatrees_and_plots(tmp_path):
    out = tmp_path / "pc"
    # the design's example spec: T's kernel over two features (the shipped flagship sweeps one)
    r = cli("prior-check", Path(__file__).resolve().parents[1] / "data" / "spec-example.toml", "--out", out,
            "--draws", "12")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["prior_instrumental.nc", "prior_instrumental.png", "prior_terminal.nc", "prior_terminal.png",
                     "prior_terminal_points.png", "prior_world.nc", "prior_world.png", "prior_world_depth.png"]
    dt = read_datatree(out / "prior_terminal.nc")
    assert {"prior", "prior_predictive"} <= set(dt.children)
    # named as in a run's terminal.nc: the declared LogNormal(0, 1), ARD over 2 named features, output "value"
    ls = dt["prior"]["terminal.kernel.lengthscale"]
    assert ls.dims == ("chain", "draw", "output", "terminal.kernel.lengthscale.feature") and ls.shape == (1, 12, 1, 2)
    assert list(ls["output"].values) == ["value"] and np.all(ls.values > 0)
    assert list(ls["terminal.kernel.lengthscale.feature"].values) == ["coin_dx", "agent_x"]
    assert {"terminal.f", "terminal.y"} <= set(dt["prior_slices"].data_vars)
    f = dt["prior_slices"]["terminal.f"]
    assert f.sizes["feature"] == 2 and f.sizes["draw"] == 12
    assert list(f["feature"].values) == ["coin_dx", "agent_x"]
    # the prior predictive check at the train split's inputs, as a run file holds it
    observed = dt["observed_data"]["terminal.y"]
    drawn = dt["prior_predictive"]["terminal.y"]
    assert drawn.dims == ("chain", "draw", "obs", "output") and drawn.shape == (1, 12, *observed.shape)
    assert dt["constant_data"]["terminal.x"].dims == ("obs", "feature") and observed.sizes["obs"] > 10
    assert list(dt["constant_data"]["feature"].values) == ["coin_dx", "agent_x"]
    x = dt["prior_slices"]["x"]  # the slices' points in feature units: coin_dx spans -9 .. 9
    assert x.dims == ("feature", "grid") and float(x[0].min()) < -1 < 1 < float(x[0].max())
    # functions vary along the grid (a draw is a function, not a constant)
    assert float(np.std(f.values[0, :, 0, :, 0], axis=-1).max()) > 1e-3
    world = read_datatree(out / "prior_world.nc")
    assert "world.depth" in world["prior"]  # the speed prior mixes depths


def test_prior_check_bad_spec_writes_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "experiments" / "coin-shift.toml").read_text().replace('"HalfNormal", scale = 0.1',
                                                                                 '"Normal", loc = 0.0, scale = 0.1'))
    out = tmp_path / "pc"
    r = cli("prior-check", bad, "--out", out)
    assert r.returncode == 2 and "terminal.noise" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]


SHIPPED = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_prior_check_draws_every_shipped_experiments_priors(name, tmp_path):
    """What the CLI's prior-check does, in-process: every role's prior draws, for every shipped spec
    (a fixed numeric GP mean, a gymnasium env whose ranges are measured, ...)."""
    from priorguard.analysis.prior_check import write_prior_check
    from priorguard.experiments.catalog import load_spec
    from priorguard.experiments.context import world_outputs
    from priorguard.experiments.env_spec import info_with_ranges
    from priorguard.experiments.runner import training_sets_of

    spec = load_spec(name)
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"train_episodes": 3, "max_points": 100})})
    info = info_with_ranges(spec)
    train = training_sets_of(spec, 0)
    written = write_prior_check(spec.model_roles(), info, tmp_path, seed=0, num_draws=3, train=train,
                                world_columns=world_outputs(spec, list(info.feature_names)))
    for role in spec.model_roles():
        dt = read_datatree(tmp_path / f"prior_{role}.nc")
        draws = dt["prior_slices"]
        assert all(np.isfinite(draws[v].values).all() for v in draws.data_vars), role
        if role in train:  # T, W, D: the data each prior draw gives at the training inputs, W's outputs in order
            observed = dt["observed_data"].to_dataset()
            site = next(iter(observed.data_vars))
            assert site == f"{role}.y" and list(dt["prior_predictive"].data_vars) == [site]
            assert dt["prior_predictive"][site].shape[2:] == observed[site].shape
            assert np.isfinite(dt["prior_predictive"][site].values).all(), role
            if role == "world":
                assert list(observed["output"].values) == train["world"].kwargs["output_names"]
        # the prior's variables along the run files' named dims (feature, hidden<i>, output, ...)
        prior = dt["prior"]
        unnamed = [(v, d) for v in prior.data_vars for d in prior[v].dims if "_dim" in d]
        assert not unnamed, (role, unnamed)
    assert written


def test_prior_check_draws_the_sweep_points_side_by_side(tmp_path):
    """coin-shift sweeps T's and I's inputs and symmetry: one figure per changed role, a row per
    point; W is the same at every point and gets none."""
    from PIL import Image

    out = tmp_path / "pc"
    r = cli("prior-check", "coin-shift", "--out", out, "--draws", "4")
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    assert {"prior_terminal_points.png", "prior_instrumental_points.png"} <= names
    assert "prior_world_points.png" not in names and not any(n.startswith(".") for n in names)
    width, height = Image.open(out / "prior_terminal_points.png").size
    assert height > 2 * 180  # three rows of panels
