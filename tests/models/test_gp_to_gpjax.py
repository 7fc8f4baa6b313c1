"""A fitted exact GP exports to GPJax 1.0 (a ConjugateModel and its Dataset) that predicts the same."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.models.base import as_data
from priorguard.models.gp import fit_gp

RNG = np.random.default_rng(7)
X = RNG.uniform([-2.0, 0.0], [2.0, 10.0], size=(40, 2))
Y = np.sin(X[:, :1]) + 0.1 * X[:, 1:] + 0.05 * RNG.standard_normal((40, 1))
XS = RNG.uniform([-3.0, -1.0], [3.0, 12.0], size=(25, 2))  # inside and outside the data


@pytest.mark.parametrize("spec", [
    {"model": "gp", "kernel": {"kind": "rbf"}},
    {"model": "gp", "kernel": {"kind": "matern52"}, "mean": "constant"},
    {"model": "gp", "kernel": {"kind": "sum", "terms": [{"kind": "matern32", "active_dims": ["a"]},
                                                         {"kind": "linear", "active_dims": ["b"]}]}, "mean": 0.0},
    {"model": "gp", "kernel": {"kind": "rbf"}, "features": ["b"]},
])
def test_gpjax_predicts_what_priorguard_predicts(spec):
    post = fit_gp(spec, as_data(X, Y), key=jax.random.key(0), feature_names=["a", "b"],
                  feature_ranges=[(-2.0, 2.0), (0.0, 10.0)])
    export = post.to_gpjax()
    assert type(export.model).__name__ == "ConjugateModel" and export.dataset.X.shape[0] == post.state.x.shape[0]
    mean, var = export.predict(XS)
    ours = post.predict(jnp.asarray(XS))
    np.testing.assert_allclose(np.asarray(mean), np.asarray(ours.mean[:, 0]), rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.asarray(var), np.asarray(ours.epistemic_var[:, 0]), rtol=0, atol=1e-8)


def test_a_posterior_gpjax_cannot_hold_is_refused_with_the_reason():
    nuts = fit_gp({"model": "gp", "kernel": {"kind": "rbf"},
                   "inference": {"method": "nuts", "warmup": 20, "samples": 4, "chains": 1}},
                  as_data(X[:12], Y[:12]), key=jax.random.key(0), feature_names=["a", "b"],
                  feature_ranges=[(-2.0, 2.0), (0.0, 10.0)])
    with pytest.raises(ValueError, match="pass sample=0"):
        nuts.to_gpjax()
    mean, _ = nuts.to_gpjax(sample=1).predict(XS)  # one hyperparameter sample: a GPJax model of its own
    assert np.isfinite(np.asarray(mean)).all()
    even = fit_gp({"model": "gp", "kernel": {"kind": "rbf", "even": ["a"]}}, as_data(X, Y), key=jax.random.key(0),
                  feature_names=["a", "b"], feature_ranges=[(-2.0, 2.0), (0.0, 10.0)])
    with pytest.raises(ValueError, match="even"):
        even.to_gpjax()
