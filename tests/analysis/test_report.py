"""Reports from a result store: grouped by sweep point, intervals over seeds, self-contained HTML."""

import subprocess
import sys

import numpy as np
import pytest

from priorguard.analysis.report import build_report, mean_interval, summarise
from priorguard.experiments.store import ResultStore, write_json


def fill(store, points):
    for label, regrets in points.items():
        for seed, regret in enumerate(regrets):
            run_id = f"{label}-{seed}"
            store.register(run_id, experiment="exp", env="e", seed=seed, overrides={"terminal.kernel.kind": label})
            metrics = {"regret": regret, "catastrophe_rate": regret / 2, "veto_rate": 0.1, "veto_threshold": 0.3,
                       "terminal_coverage90_train": 0.9, "terminal_coverage90_deploy": 0.6,
                       "terminal_epistemic_auroc": 0.8, "veto_precision": None}
            with store.writing(run_id) as folder:
                write_json(folder / "metrics.json", metrics)
            store.mark_done(run_id, metrics)


def test_mean_interval_matches_t_distribution():
    m, lo, hi = mean_interval([0.2, 0.4, 0.6, 0.8])
    assert m == pytest.approx(0.5)
    # t(3) 95% quantile 2.3534, sd 0.2582, se 0.1291
    assert hi - m == pytest.approx(2.3534 * 0.2582 / 2, rel=1e-3)
    assert mean_interval([1.0]) == (1.0, 1.0, 1.0)
    assert all(np.isnan(mean_interval([float("nan")])))


def test_report_groups_points_and_embeds_plots(tmp_path):
    store = ResultStore(tmp_path / "store")
    fill(store, {"rbf": [0.5, 0.6, 0.7], "matern52": [0.1, 0.2, 0.15]})
    points = {p.label: p for p in summarise(store)}
    assert set(points) == {"kernel.kind=rbf", "kernel.kind=matern52"}
    assert points["kernel.kind=rbf"].stat("regret")[0] == pytest.approx(0.6)
    page = build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    assert "kernel.kind=matern52" in text and "0.6 [" in text
    assert "Best on deploy (lowest regret): exp: kernel.kind=matern52" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 6
    assert "<table>" in html


def test_report_cli_rejects_a_non_store(tmp_path):
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "report", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "not a result store" in r.stderr and "Traceback" not in r.stderr


def test_point_labels_are_short_and_merge_linked_paths():
    from priorguard.analysis.report import _label

    assert _label({"terminal.features": ["agent_x"], "instrumental.features": ["agent_x"]}) == \
        "terminal+instrumental.features=['agent_x']"
    assert _label({"terminal.features": ["agent_x"], "instrumental.features": ["coin_dx"]}) == \
        "terminal.features=['agent_x'], instrumental.features=['coin_dx']"
    assert _label({"terminal.kernel.kind": "rbf", "planner.depth": 3}) == "kernel.kind=rbf, planner.depth=3"
    assert _label({}) == "base"
