"""Diagnostics and calibration metrics against known reference values."""

import math

import arviz as az
import numpy as np
import pytest

from priorguard.analysis.diagnostics import (
    DIVERGENCE_WARNING,
    RHAT_WARNING,
    auroc,
    diagnose,
    interval_coverage,
    read_datatree,
    summary,
    write_datatree,
)


def tree(posterior, diverging=None):
    groups = {"posterior": posterior}
    if diverging is not None:
        groups["sample_stats"] = {"diverging": diverging}
    return az.from_dict(groups, sample_dims=["chain", "draw"])


def test_iid_chains_are_healthy():
    rng = np.random.default_rng(0)
    d = diagnose(tree({"a": rng.normal(size=(4, 1000))}), warn=False)
    assert d.rhat_max < 1.01
    # iid draws: bulk ESS close to the number of draws (4000), within sampling noise
    assert 3000 < d.ess_bulk_min < 5000
    assert d.messages == [] and d.divergences == 0


def test_disagreeing_chains_and_divergences_are_flagged():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 500))
    x[1] += 3.0
    div = np.zeros((2, 500), bool)
    div[0, :7] = True
    with pytest.warns(UserWarning, match="rhat statistic is larger than 1.01"):
        d = diagnose(tree({"a": x}, div))
    assert d.rhat_max > 1.5
    assert d.divergences == 7
    assert DIVERGENCE_WARNING.format(n=7) in d.messages and RHAT_WARNING in d.messages


def test_summary_uses_explicit_90_percent_interval():
    rng = np.random.default_rng(2)
    s = summary(tree({"a": rng.normal(size=(2, 20000))}))
    assert "eti90_lb" in s.columns and "eti90_ub" in s.columns  # not ArviZ's 89% default
    lo, hi = float(s.loc["a", "eti90_lb"]), float(s.loc["a", "eti90_ub"])
    assert lo == pytest.approx(-1.645, abs=0.05) and hi == pytest.approx(1.645, abs=0.05)


def test_coverage_matches_gaussian_levels():
    rng = np.random.default_rng(3)
    y = rng.normal(size=20000)
    for level in (0.5, 0.9):
        cov = interval_coverage(y, np.zeros_like(y), np.ones_like(y), level=level)
        assert abs(cov - level) < 4 * math.sqrt(level * (1 - level) / y.size)
    # an overconfident predictive (var 0.25) undercovers
    assert interval_coverage(y, np.zeros_like(y), 0.25 * np.ones_like(y), level=0.9) < 0.65


def test_auroc_reference_values():
    assert auroc([1, 2, 3], [4, 5, 6]) == 0.0
    assert auroc([4, 5, 6], [1, 2, 3]) == 1.0
    rng = np.random.default_rng(4)
    # two unit Gaussians one unit apart: AUROC = Phi(1 / sqrt(2)) = 0.7602
    a = auroc(rng.normal(1.0, 1.0, 20000), rng.normal(0.0, 1.0, 20000))
    assert a == pytest.approx(0.7602, abs=0.01)


def test_auroc_counts_scores_equal_up_to_rounding_as_ties():
    """A GP equally sure of two states gives stds that differ in the 12th digit, either way round
    (coin-shift's T: 0.0010726408392995 on deploy, 0.0010726408393325 on train); which rounding
    puts first must not move the AUROC."""
    sure = 1.0726408393e-3
    for noise in (3e-14, -3e-14):
        pos, neg = [sure, 0.40], [sure + noise, 0.0028, 0.0033]
        assert auroc(pos, neg) == pytest.approx((0.5 + 0 + 0 + 1 + 1 + 1) / 6)  # the near-equal pair: one half
    assert auroc([sure * (1 + 1e-6)], [sure]) == 1.0  # a real difference still counts
    assert np.isnan(auroc([np.nan, 1.0], [0.5]))


def test_netcdf_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    dt = tree({"a": rng.normal(size=(2, 10)), "b": rng.normal(size=(2, 10, 3))})
    write_datatree(dt, tmp_path / "p.nc")
    back = read_datatree(tmp_path / "p.nc")
    np.testing.assert_array_equal(back["posterior"]["b"].values, dt["posterior"]["b"].values)
