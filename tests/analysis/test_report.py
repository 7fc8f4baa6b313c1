"""Reports from a result store: grouped by sweep point, intervals over seeds, self-contained HTML."""

import math
import subprocess
import sys

import numpy as np
import pytest

from priorguard.analysis.report import build_report, mean_interval, summarise
from priorguard.store import ResultStore, write_json


def fill(store, points, extra=None):
    for label, regrets in points.items():
        for seed, regret in enumerate(regrets):
            run_id = f"{label}-{seed}"
            store.register(run_id, experiment="exp", env="e", seed=seed, overrides={"terminal.kernel.kind": label})
            metrics = {"regret": regret, "catastrophe_rate": regret / 2, "veto_rate": 0.1, "veto_threshold": 0.3,
                       "terminal_coverage90_train": 0.9, "terminal_coverage90_deploy": 0.6,
                       "terminal_epistemic_auroc": 0.8, "veto_precision": None, **(extra or {})}
            with store.writing(run_id) as folder:
                write_json(folder / "metrics.json", metrics)
            store.mark_done(run_id, metrics)


def test_mean_interval_matches_t_distribution_and_is_the_range_below_five_seeds():
    m, lo, hi = mean_interval([0.2, 0.4, 0.6, 0.8, 1.0])
    assert m == pytest.approx(0.6)
    # t(4) 95% quantile 2.1318, sd 0.3162, se 0.1414
    assert hi - m == pytest.approx(2.1318 * 0.3162 / math.sqrt(5), rel=1e-3)
    # two seeds: their range, not a t-interval of 6.3 standard errors
    assert mean_interval([0.1, 0.9]) == pytest.approx((0.5, 0.1, 0.9))
    assert mean_interval([0.3, 0.5, 0.4, 0.2]) == pytest.approx((0.35, 0.2, 0.5))
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
    assert "tampering" not in text.lower()  # nothing here can be tampered with


def test_report_names_a_tie_on_deploy(tmp_path):
    store = ResultStore(tmp_path / "store")
    fill(store, {"rbf": [0.5, 0.6], "matern52": [0.5, 0.6], "linear": [0.9, 0.9]})
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    a, b = "exp: kernel.kind=rbf", "exp: kernel.kind=matern52"
    assert (f"Best on deploy (lowest regret): {a} (tied with {b})." in text
            or f"Best on deploy (lowest regret): {b} (tied with {a})." in text)
    assert "linear (tied" not in text and "tied with exp: kernel.kind=linear" not in text


def test_report_shows_tampering_where_the_runs_measured_it(tmp_path):
    store = ResultStore(tmp_path / "store")
    fill(store, {"rbf": [0.5, 0.6]}, extra={"tampering_rate": 0.25, "no_veto_tampering_rate": 0.75,
                                             "proposal_alone_tampering_rate": 1.0, "rater_gap": 3.5})
    page = build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    head, _, row = [line for line in text.splitlines() if line.startswith("|")][:3]
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["tampering"] == "0.25" and cells["tampering (no veto)"] == "0.75"
    assert cells["tampering (A alone)"] == "1" and cells["rater gap"] == "3.5"
    assert (tmp_path / "report" / "tampering.png").exists()
    assert page.read_text().count("data:image/png;base64,") == 7


def test_report_cli_rejects_a_non_store(tmp_path):
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "report", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "not a result store" in r.stderr and "Traceback" not in r.stderr


def test_point_labels_are_short_and_merge_linked_paths():
    from priorguard.analysis.report import point_label

    assert point_label({"terminal.features": ["agent_x"], "instrumental.features": ["agent_x"]}) == \
        "terminal+instrumental.features=['agent_x']"
    assert point_label({"terminal.features": ["agent_x"], "instrumental.features": ["coin_dx"]}) == \
        "terminal.features=['agent_x'], instrumental.features=['coin_dx']"
    assert point_label({"terminal.kernel.kind": "rbf", "planner.depth": 3}) == "kernel.kind=rbf, planner.depth=3"
    assert point_label({}) == "base"


def store_of_gp_fits(tmp_path, x, y, spec):
    """Runs whose T reads column 0 (regret 0.2) or column 1 (regret 0.8) of ``x``, seeds 0 and 1."""
    import jax

    from priorguard.analysis.diagnostics import write_datatree
    from priorguard.models.base import as_data
    from priorguard.models.gp import fit_gp

    store = ResultStore(tmp_path / "store")
    for col, regret in ((0, 0.2), (1, 0.8)):
        for seed in (0, 1):
            run_id = f"col{col}-{seed}"
            store.register(run_id, experiment="exp", env="e", seed=seed, overrides={"terminal.features": [f"x{col}"]})
            post = fit_gp(spec, as_data(x[:, col:col + 1], y), key=jax.random.key(seed))
            metrics = {"regret": regret + 0.01 * seed}
            with store.writing(run_id) as folder:
                write_datatree(post.to_datatree(), folder / "terminal.nc")
                write_json(folder / "metrics.json", metrics)
            store.mark_done(run_id, metrics)
    return store


def test_report_ranks_priors_by_the_exact_loo_of_map_gps(tmp_path):
    # MAP GPs have one hyperparameter draw: PSIS-LOO cannot run, the exact LOO in terminal.nc ranks them
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (40, 2))
    y = np.sin(6.0 * x[:, :1]) + 0.05 * rng.standard_normal((40, 1))  # only column 0 explains y
    store = store_of_gp_fits(tmp_path, x, y, {"model": "gp", "kernel": {"kind": "rbf"}, "inference": {"method": "map"}})
    points = {p.label: p for p in summarise(store)}
    good, bad = points["terminal.features=['x0']"], points["terminal.features=['x1']"]
    assert np.all(np.isfinite(good.loo + bad.loo)) and min(good.loo) > max(bad.loo)
    # every input is unique here, so leaving out a state is leaving out an observation
    np.testing.assert_allclose(good.loso + bad.loso, good.loo + bad.loo, rtol=1e-9)
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    assert "Best by in-distribution LOSO: exp: terminal.features=['x0']" in text
    assert "LOSO does not separate them" not in text  # x0's score is far above x1's on every seed
    # az.compare's verdict per seed, as `priorguard compare` gives it: x0 first by LOO and least regret
    for seed in (0, 1):
        assert (f"- exp seed {seed}: LOO ranks first terminal.features=['x0']" in text
                and "-> the same prior" in text.split(f"- exp seed {seed}: ")[1].splitlines()[0]), text


def test_report_ranks_by_leaving_out_states_where_leaving_out_observations_cannot(tmp_path):
    """Six states visited 30 times each, labels exact: a feature that only names the states fits them as
    well as the one that explains them (LOO cannot tell), but cannot predict a state it has not seen."""
    rng = np.random.default_rng(1)
    smooth = np.linspace(0.0, 1.0, 6)
    ident = rng.permutation(6) / 5.0  # a state's name: unrelated to its label
    x = np.repeat(np.stack([smooth, ident], axis=1), 30, axis=0)
    y = np.sin(3.0 * x[:, :1])
    store = store_of_gp_fits(tmp_path, x, y, {"model": "gp", "kernel": {"kind": "rbf"}, "inference": {"method": "map"},
                                              "noise": {"dist": "HalfNormal", "scale": 0.01}})
    points = {p.label: p for p in summarise(store)}
    good, bad = points["terminal.features=['x0']"], points["terminal.features=['x1']"]
    assert min(good.loso) > max(bad.loso) + 10.0
    # per observation both look alike: the copies left in give the answer (about 2712 nats each)
    assert abs(np.mean(good.loo) - np.mean(bad.loo)) < 1e-3 * abs(np.mean(good.loo))
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    assert "Best by in-distribution LOSO: exp: terminal.features=['x0']" in text


def test_report_says_when_no_run_has_a_loo(tmp_path):
    store = ResultStore(tmp_path / "store")
    fill(store, {"rbf": [0.5, 0.6], "matern52": [0.1, 0.2]})  # no terminal.nc
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    assert "Best by in-distribution LOO" not in text and "LOO ranks nothing" in text


def test_report_says_when_the_sweep_leaves_t_unchanged(tmp_path):
    """A sweep over the planner fits the same T at every point: nothing for cross-validation to rank."""
    import jax

    from priorguard.analysis.diagnostics import write_datatree
    from priorguard.models.base import as_data
    from priorguard.models.gp import fit_gp

    rng = np.random.default_rng(2)
    x = np.repeat(rng.uniform(0.0, 1.0, (5, 1)), 4, axis=0)
    post = fit_gp({"model": "gp", "kernel": {"kind": "rbf"}}, as_data(x, np.cos(3 * x)), key=jax.random.key(0))
    dt = post.to_datatree()
    store = ResultStore(tmp_path / "store")
    for depth, regret in ((1, 0.9), (3, 0.5), (6, 0.2)):
        run_id = f"d{depth}"
        store.register(run_id, experiment="exp", env="e", seed=0, overrides={"planner.depth": depth})
        with store.writing(run_id) as folder:
            write_datatree(dt, folder / "terminal.nc")
            write_json(folder / "metrics.json", {"regret": regret})
        store.mark_done(run_id, {"regret": regret})
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    assert "T's LOSO is the same at every sweep point" in text
    assert "Best on deploy (lowest regret): exp: planner.depth=6." in text
    assert "Spearman" not in text and "nan" not in text.split("## Diagnostics")[0].lower()


def test_intervals_of_rates_stay_in_zero_one_and_others_do_not():
    from priorguard.analysis.report import PointSummary
    from priorguard.metrics import is_unit_metric

    five = [0.0, 0.0, 1.0, 1.0, 1.0]
    point = PointSummary("e", "p", list(range(5)), {"tampering_rate": five, "regret": five,
                                                    "terminal_coverage90_deploy": [0.0, 0.0, 0.0, 0.0, 1.0]}, [])
    m, lo, hi = point.stat("tampering_rate")
    assert m == pytest.approx(0.6) and hi == 1.0 and 0.0 < lo < 0.2  # the t-interval runs to 1.12
    _, lo_c, _ = point.stat("terminal_coverage90_deploy")
    assert lo_c == 0.0
    _, _, hi_r = point.stat("regret")  # regret is not bounded by 1
    assert hi_r > 1.0
    three = PointSummary("e", "p", [0, 1, 2], {"regret": [0.2, 0.9, 0.5]}, [])
    assert three.stat("regret") == pytest.approx((1.6 / 3, 0.2, 0.9))  # below 5 seeds: their range
    assert all(is_unit_metric(k) for k in ("veto_recall", "deploy_in_range_fraction", "terminal_epistemic_auroc"))
    assert not any(is_unit_metric(k) for k in ("rater_gap", "deploy_return", "regret_in_range"))


def test_the_report_opens_with_its_finding_per_seed(tmp_path):
    """Provenance, the prior with the lowest regret and on how many seeds it won, the planner
    against A alone, the veto's promise; catastrophe panels left out where the env has none."""
    store = ResultStore(tmp_path / "store")
    none = {"veto_precision_na": "e has no catastrophic states", "proposal_alone_regret": 0.5,
            "train_false_veto_rate": 0.02, "train_false_veto_bound": 0.07}
    fill(store, {"rbf": [0.1, 0.0, 0.6], "linear": [0.5, 0.7, 0.5]}, extra=none)
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    finding = text.split("## Finding", 1)[1].split("\n## ", 1)[0]
    assert "exp on e: 6 run(s), 2 sweep point(s) x seeds 0, 1, 2; priorguard" in finding
    assert "Lowest deploy regret: kernel.kind=rbf (0.10 / 0.00 / 0.60)" in finding
    assert "lower on 2 of 3 seed(s)" in finding
    assert "over A alone's: 0.20 / 0.00 / 1.20 (below 1, where the planner acted better than A, on 2 of 3" in finding
    assert "held on 6 of 6 run(s)" in finding and "e has no catastrophic states" in finding
    metrics = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    assert "catastrophe" not in metrics and "veto precision" not in metrics
    assert not (tmp_path / "report" / "veto_threshold.png").exists()
    # with catastrophes the panels stay
    fill(store, {"matern52": [0.3]}, extra={"veto_precision": 0.5})
    build_report(store.root, tmp_path / "report2")
    assert "catastrophe" in (tmp_path / "report2" / "index.md").read_text().split("## Metrics", 1)[1]


def test_report_shows_the_veto_promise_per_run(tmp_path):
    """Each run's train false-veto rate beside its bound, and whether it held (one run breaks it)."""
    store = ResultStore(tmp_path / "store")
    fill(store, {"rbf": [0.5, 0.6]}, extra={"train_false_veto_rate": 0.02, "train_false_veto_bound": 0.07,
                                             "veto_loops": 0, "terminal_ood_auroc": 1.0})
    fill(store, {"linear": [0.5]}, extra={"train_false_veto_rate": 0.09, "train_false_veto_bound": 0.07,
                                          "veto_loops": 3, "terminal_ood_auroc": None})
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    section = text.split("## The veto's promise, per run", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| exp |")]
    assert len(rows) == 3
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    by_point = {(c[1], c[2]): c for c in cells}
    assert by_point[("kernel.kind=rbf", "0")][3:6] == ["0.020", "0.070", "yes"]
    assert by_point[("kernel.kind=linear", "0")][3:9] == ["0.090", "0.070", "**no**", "0.1", "3", "n/a"]
