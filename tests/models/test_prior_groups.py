"""A role's prior side before any fit (models/prior_groups.py) is what its run file holds after it."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

from priorguard.models.base import as_data
from priorguard.models.prior_groups import prior_tree
from priorguard.models.roles import fit_role
from priorguard.priors.models import BNNModel, GPModel

N = 25


def _data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (N, 2))
    return x, 5.0 + 3.0 * np.sin(6.0 * x[:, :1])  # far from standardised: the draws must be in these units


SPECS = {
    "gp": GPModel.model_validate({"model": "gp", "kernel": {"kind": "rbf"}, "inference": {"method": "map", "steps": 20}}),
    "gp_search": GPModel.model_validate({"model": "gp", "kernel": {"search": ["rbf", "linear"], "max_terms": 1},
                                         "inference": {"method": "map", "steps": 20}}),
    "bnn": BNNModel.model_validate({"model": "bnn", "hidden": [4], "inference": {"method": "map", "steps": 30}}),
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_prior_side_before_the_fit_is_named_as_the_run_file(kind):
    x, y = _data()
    common = dict(role="terminal", feature_names=["a", "b"], feature_ranges=[(0.0, 1.0)] * 2)
    before = prior_tree(SPECS[kind], as_data(x, y), key=jax.random.key(1), draws=40, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = fit_role(SPECS[kind], as_data(x, y), key=jax.random.key(0), **common).to_datatree()
    # a search's prior is over structures: before the fit its most probable one, after it the posterior's
    groups = ("prior_predictive", "observed_data", "constant_data") + (("prior",) if kind != "gp_search" else ())
    for group in groups:
        b, a = before[group].to_dataset(), after[group].to_dataset()
        assert set(b.data_vars) == set(a.data_vars), group
        for name in b.data_vars:
            assert b[name].dims == a[name].dims, (group, name)
            for dim in b[name].dims:
                if dim not in ("chain", "draw"):
                    np.testing.assert_array_equal(b[dim].values, a[dim].values)
    np.testing.assert_array_equal(before["observed_data"]["terminal.y"].values, y)
    drawn = before["prior_predictive"]["terminal.y"].values
    assert drawn.shape == (1, 40, N, 1) and np.all(np.isfinite(drawn))
    # in the labels' units: centred near them, of a spread within an order of magnitude
    assert abs(drawn.mean() - y.mean()) < 2.0 * y.std() and 0.1 * y.std() < drawn.std() < 10.0 * y.std()


def test_bnn_with_a_speed_prior_draws_its_depth_per_draw():
    x, y = _data()
    spec = BNNModel.model_validate({"model": "bnn", "hidden": [4, 4],
                                    "speed": {"kind": "depth", "max_depth": 2, "strength": 1.0}})
    dt = prior_tree(spec, as_data(x, y), key=jax.random.key(0), role="terminal", feature_names=["a", "b"],
                    feature_ranges=[(0.0, 1.0)] * 2, draws=60)
    depths = dt["prior"]["terminal.depth"].values.ravel()
    assert set(np.unique(depths)) <= {0, 1, 2} and len(np.unique(depths)) > 1
    assert np.all(np.isfinite(dt["prior_predictive"]["terminal.y"].values))


def test_a_factored_w_is_joined_as_its_run_file():
    """W with parents: one model per factor, W's outputs in W's order, as fit_role's file has them."""
    rng = np.random.default_rng(2)
    ab = rng.uniform(0.0, 1.0, (N, 2))
    go = rng.integers(0, 2, N).astype(float)
    x = np.c_[ab, go, 1.0 - go]
    y = np.stack([ab[:, 0] * go, -ab[:, 1]], axis=1)
    spec = GPModel.model_validate({"model": "gp", "kernel": {"kind": "rbf"}, "inference": {"method": "map", "steps": 20},
                                   "parents": {"b": ["b"]}})  # b's change reads b; a's reads everything
    common = dict(role="world", feature_names=["a", "b", "go", "stay"], feature_ranges=[(0.0, 1.0)] * 4,
                  output_names=["delta_a", "delta_b"], num_action_columns=2)
    before = prior_tree(spec, as_data(x, y), key=jax.random.key(0), draws=20, **common)
    after = fit_role(spec, as_data(x, y), key=jax.random.key(0), **common).to_datatree()
    for group in ("prior_predictive", "observed_data", "constant_data"):
        b, a = before[group]["world.y" if group != "constant_data" else "world.x"], \
            after[group]["world.y" if group != "constant_data" else "world.x"]
        assert b.dims == a.dims and b.shape[-2:] == a.shape[-2:], group
    assert list(before["observed_data"]["output"].values) == ["delta_a", "delta_b"]
    np.testing.assert_array_equal(before["observed_data"]["world.y"].values, y)
    assert set(before["prior"].data_vars) == set(after["prior"].data_vars)
