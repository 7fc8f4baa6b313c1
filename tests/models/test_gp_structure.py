"""Kernel structure search: the simplicity prior and the evidence pick the generating structure."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.models.base import Posterior, as_data
from priorguard.models.gp import fit_gp
from priorguard.models.structure_search import StructurePosterior
from priorguard.priors.models import GPModel


def _data(n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.random(n))[:, None]
    y = 1.5 * x[:, 0] + 0.5 * np.sin(2 * np.pi * x[:, 0] / 0.25) + 0.05 * rng.standard_normal(n)
    return x, y


def test_search_recovers_linear_plus_periodic():
    x, y = _data()
    spec = GPModel.model_validate({
        "model": "gp",
        "kernel": {"search": ["linear", "periodic", "rbf"], "max_terms": 2, "operators": ["sum"]},
        "inference": {"method": "map", "restarts": 3, "steps": 150},
    })
    post = fit_gp(spec, as_data(x, y), key=jax.random.key(0), feature_names=["t"], feature_ranges=[(0.0, 1.0)])
    assert isinstance(post, StructurePosterior) and isinstance(post, Posterior)
    report = post.report()
    assert len(report) == 9
    assert post.best.expression == "linear + periodic", report
    assert post.best.probability > 0.5, report
    assert math.isclose(sum(r["posterior"] for r in report), 1.0, rel_tol=1e-9)
    # the single-kernel explanations are far less probable than the truth
    masses = {r["structure"]: r["posterior"] for r in report}
    assert masses["linear"] < 1e-3 and masses["periodic"] < masses["linear + periodic"]

    # model-averaged predictions, densities and draws have the protocol's shapes
    xq = jnp.asarray(np.linspace(0.0, 1.2, 5)[:, None])
    pred = post.predict(xq)
    assert pred.mean.shape == (5, 1) and bool(jnp.all(pred.epistemic_var >= 0))
    truth = 1.5 * xq[:, 0] + 0.5 * jnp.sin(2 * jnp.pi * xq[:, 0] / 0.25)
    assert float(jnp.max(jnp.abs(pred.mean[:4, 0] - truth[:4]))) < 0.15
    assert post.log_predictive_density(xq, truth[:, None]).shape == (5,)
    draws = post.sample_functions(jax.random.key(1), 100)  # 100: the datatree's count, compiled once
    f = draws(xq)
    assert f.shape == (100, 5, 1)
    np.testing.assert_array_equal(f, draws(xq))
    dt = post.to_datatree()
    sp = dt["structure_posterior"]
    assert list(sp["structure"].values)[0] == "linear + periodic"
    np.testing.assert_allclose(float(sp["posterior"].sum()), 1.0)


def test_bic_evidence_and_simplicity_prior():
    """A strong simplicity prior moves mass to the smaller structure; BIC runs too."""
    rng = np.random.default_rng(3)
    x = rng.random((40, 1))
    y = 2.0 * x[:, 0] + 0.1 * rng.standard_normal(40)
    base = {"search": ["linear", "rbf"], "max_terms": 2, "operators": ["sum"], "evidence": "bic"}
    fits = {}
    for simplicity in (0.0, 3.0):
        spec = GPModel.model_validate({"model": "gp", "kernel": {**base, "simplicity": simplicity}, "mean": "constant",
                                       "inference": {"method": "map", "steps": 100}})
        post = fit_gp(spec, as_data(x, y), key=jax.random.key(2), feature_ranges=[(0.0, 1.0)])
        fits[simplicity] = {r["structure"]: r for r in post.report()}
    assert fits[3.0]["linear"]["posterior"] > fits[0.0]["linear"]["posterior"]
    # the evidence does not depend on the prior; only the posterior does
    for s in fits[0.0]:
        np.testing.assert_allclose(fits[0.0][s]["log_evidence"], fits[3.0][s]["log_evidence"], rtol=1e-6)
    assert max(fits[3.0], key=lambda s: fits[3.0][s]["posterior"]) == "linear"
