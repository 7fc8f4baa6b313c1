"""Per-run PNG plots from a run folder: every plot, skipped bars/panels, failures that only warn."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import jax
import numpy as np
import pytest
import xarray as xr

from priorguard.analysis import run_plots
from priorguard.analysis.diagnostics import read_datatree, write_datatree
from priorguard.analysis.run_plots import RunPlotWarning, select_posterior_entries, write_run_plots
from priorguard.store import write_json
from priorguard.models.base import as_data
from priorguard.models.gp import fit_gp

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

METRICS = {
    "deploy_return": 1.5, "no_veto_return": 0.5, "proposal_alone_return": -2.0, "oracle_return": 3.0,
    "catastrophe_rate": 0.1, "no_veto_catastrophe_rate": 0.4, "proposal_alone_catastrophe_rate": 0.6,
    "oracle_catastrophe_rate": 0.0,
    "terminal_coverage50_train": 0.52, "terminal_coverage90_train": 0.91,
    "terminal_coverage50_deploy": 0.3, "terminal_coverage90_deploy": 0.7,
    "world_coverage50_train": 0.49, "world_coverage90_train": 0.88,
    "world_coverage50_deploy": 0.41, "world_coverage90_deploy": 0.8,
    "fit_terminal_s": 0.1, "seed": 3, "experiment": "fake", "env": "none", "overrides": {"terminal.kernel.kind": "rbf"},
}


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC, path
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    import matplotlib.image

    arr = matplotlib.image.imread(path)
    assert arr.ndim == 3 and arr.shape[2] in (3, 4)
    assert float(arr[..., :3].std()) > 0.01  # something was drawn


@pytest.fixture(scope="module")
def gp_nc(tmp_path_factory):
    """A real fitted exact-GP posterior (MAP), written with write_datatree."""
    rng = np.random.default_rng(0)
    x = rng.random((24, 2))
    y = np.sin(3.0 * x[:, 0]) + 0.1 * rng.standard_normal(24)
    post = fit_gp({"model": "gp", "kernel": {"kind": "rbf"}, "inference": {"method": "map", "steps": 30}},
                  as_data(x, y), key=jax.random.key(0), feature_names=["goal_dx", "lava_dist"],
                  feature_ranges=[(0.0, 1.0), (0.0, 1.0)], site_prefix="terminal")
    path = tmp_path_factory.mktemp("gp") / "terminal.nc"
    write_datatree(post.to_datatree(), path)
    return path


def make_run_folder(folder, gp_nc, *, metrics=METRICS, curves=True, calibration=True):
    folder.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        write_json(folder / "metrics.json", metrics)
    if curves:
        rng = np.random.default_rng(1)
        write_json(folder / "curves.json", {
            "deploy_values": rng.normal(size=(6, 3)).tolist(),  # [T, episodes]
            "oracle_values": np.abs(rng.normal(size=(5, 3))).tolist(),
            "audit": {"audit_alone_rate": 0.1},
        })
    if calibration:
        write_json(folder / "calibration.json", {"threshold": 0.25, "alpha": 0.05, "n": 40,
                                                 "method": "split-conformal"})
    if gp_nc is not None:
        shutil.copy(gp_nc, folder / "terminal.nc")
    return folder


@pytest.fixture
def recorded(monkeypatch):
    """Records, for every figure saved, its file name and per-axes bar counts and titles."""
    seen = {}
    save = run_plots._save

    def spy(fig, path, **kw):
        seen[path.name] = [(ax.get_title(), len(ax.patches)) for ax in fig.axes]
        return save(fig, path, **kw)

    monkeypatch.setattr(run_plots, "_save", spy)
    return seen


def test_every_plot_of_a_complete_run_folder(tmp_path, gp_nc, recorded):
    folder = make_run_folder(tmp_path / "run", gp_nc)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunPlotWarning)
        written = write_run_plots(folder)
    names = [p.name for p in written]
    assert names == ["deploy_values.png", "outcomes.png", "coverage.png", "posterior_terminal.png"]
    for p in written:
        assert p.parent == folder
        assert_png(p)
    # four policies in both outcome panels; 2 levels x (train, deploy) bars for T and for W
    assert recorded["outcomes.png"] == [("deploy return", 4), ("catastrophe rate", 4)]
    assert recorded["coverage.png"] == [("T (terminal value)", 4), ("W (world model)", 4)]
    assert len(recorded["deploy_values.png"]) == 2

    # the folder was only read: the inputs are unchanged and nothing else appeared
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["metrics.json", "curves.json", "calibration.json", "terminal.nc", *names])
    # the posterior plot shows the GP's hyperparameters, named without the role prefix
    dt = read_datatree(gp_nc)
    entries, total = select_posterior_entries(dt["posterior"].to_dataset(), role="terminal",
                                              site_prefix=dt.attrs.get("site_prefix"))
    assert set(entries) == {"lengthscale[goal_dx]", "lengthscale[lava_dist]", "variance", "noise"}
    assert total == 4
    assert all(v.shape == (1, 100) for v in entries.values())  # MAP: 100 draws of its Laplace approximation


def test_coverage_plot_shows_i_where_the_run_has_it(tmp_path, gp_nc, recorded):
    metrics = {**METRICS, "instrumental_coverage50_train": 0.5, "instrumental_coverage90_train": 0.8,
               "instrumental_coverage90_deploy": 0.4}
    write_run_plots(make_run_folder(tmp_path / "run", gp_nc, metrics=metrics))
    assert recorded["coverage.png"] == [("T (terminal value)", 4), ("I (instrumental value)", 3),
                                        ("W (world model)", 4)]


def test_missing_or_nan_keys_skip_bars_and_panels(tmp_path, recorded):
    metrics = dict(METRICS)
    metrics["no_veto_return"] = float("nan")  # written as null
    del metrics["proposal_alone_catastrophe_rate"]
    metrics["oracle_catastrophe_rate"] = None
    for k in [k for k in metrics if k.startswith("world_coverage")]:
        del metrics[k]  # no W panel at all
    metrics["terminal_coverage50_deploy"] = float("nan")
    folder = make_run_folder(tmp_path / "run", None, metrics=metrics)
    assert json.loads((folder / "metrics.json").read_text())["no_veto_return"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunPlotWarning)
        written = write_run_plots(folder)
    assert [p.name for p in written] == ["deploy_values.png", "outcomes.png", "coverage.png"]
    for p in written:
        assert_png(p)
    assert recorded["outcomes.png"] == [("deploy return", 3), ("catastrophe rate", 2)]
    assert recorded["coverage.png"] == [("T (terminal value)", 3)]


def test_nothing_to_plot_gives_no_file_and_no_error(tmp_path):
    folder = make_run_folder(tmp_path / "run", None, metrics={"seed": 0, "regret": math.pi}, curves=False,
                             calibration=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_run_plots(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json"]
    # an empty folder (no metrics.json at all) and empty curves are fine too
    empty = tmp_path / "empty"
    empty.mkdir()
    write_json(empty / "curves.json", {"deploy_values": [], "oracle_values": [[None, None]]})
    assert write_run_plots(empty) == []


def test_metrics_passed_before_metrics_json_is_written(tmp_path):
    """What write_run does: plots in the temporary folder before metrics.json marks the run complete."""
    folder = make_run_folder(tmp_path / "run", None, metrics=None)
    written = write_run_plots(folder, metrics=METRICS)
    assert [p.name for p in written] == ["deploy_values.png", "outcomes.png", "coverage.png"]
    assert not (folder / "metrics.json").exists()


def _bnn_like_tree(noise_outputs=10):
    rng = np.random.default_rng(0)
    c, s = 1, 50
    post = xr.Dataset({
        "world.layer0.w": (("chain", "draw", "feature", "hidden0"), rng.normal(size=(c, s, 4, 16))),
        "world.layer0.b": (("chain", "draw", "hidden0"), rng.normal(size=(c, s, 16))),
        "world.layer0.lambda": (("chain", "draw", "feature", "hidden0"), np.abs(rng.normal(size=(c, s, 4, 16)))),
        "world.layer0.tau": (("chain", "draw"), np.abs(rng.normal(size=(c, s)))),
        "world.noise": (("chain", "draw", "output"), np.abs(rng.normal(size=(c, s, noise_outputs)))),
    })
    dt = xr.DataTree.from_dict({"posterior": post})
    dt.attrs.update({"model": "bnn", "inference": "svi", "site_prefix": "world"})
    return dt


def test_bnn_posterior_plots_noise_and_tau_never_weights(tmp_path):
    dt = _bnn_like_tree()
    entries, total = select_posterior_entries(dt["posterior"].to_dataset(), role="world", site_prefix="world")
    assert len(entries) == run_plots.MAX_POSTERIOR_ENTRIES
    assert total == 11  # tau + 10 noise outputs; weights, biases and lambda are not candidates
    assert "layer0.tau" in entries and "noise[0]" in entries
    assert not any(k.startswith(("layer0.w", "layer0.b", "layer0.lambda")) for k in entries)
    out = run_plots.plot_posterior(dt, tmp_path / "posterior_world.png", role="world")
    assert out is not None
    assert_png(out)


def test_posteriors_with_nothing_scalar_or_no_posterior_group_are_skipped(tmp_path, recorded):
    folder = tmp_path / "run"
    folder.mkdir()
    dt = _bnn_like_tree()
    only_weights = xr.DataTree.from_dict(
        {"posterior": dt["posterior"].to_dataset()[["world.layer0.w", "world.layer0.b"]]})
    write_datatree(only_weights, folder / "world.nc")
    no_posterior = xr.DataTree.from_dict(
        {"observed_data": xr.Dataset({"y": (("obs",), np.arange(3.0))})})
    write_datatree(no_posterior, folder / "instrumental.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunPlotWarning)
        assert write_run_plots(folder) == []
    assert not list(folder.glob("*.png"))


def test_a_failing_plot_warns_and_the_others_are_still_written(tmp_path):
    folder = make_run_folder(tmp_path / "run", None)
    (folder / "world.nc").write_bytes(b"not a netCDF file at all")
    write_datatree(_bnn_like_tree(), folder / "xworld.nc")  # after the failure: still plotted
    with pytest.warns(RunPlotWarning, match=r"posterior_world\.png not written: \w+"):
        written = write_run_plots(folder)
    assert [p.name for p in written] == ["deploy_values.png", "outcomes.png", "coverage.png",
                                         "posterior_xworld.png"]
    assert not (folder / "posterior_world.png").exists()
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # nothing left open by the failure


def test_unreadable_metrics_json_warns_and_writes_nothing(tmp_path):
    folder = make_run_folder(tmp_path / "run", None)
    (folder / "metrics.json").write_text("{not json")
    with pytest.warns(RunPlotWarning, match="JSONDecodeError"):
        assert write_run_plots(folder) == []
