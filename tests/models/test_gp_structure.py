"""Kernel structure search: the simplicity prior and the evidence pick the generating structure."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.models.base import Posterior, as_data
from priorguard.models.gp import StructurePosterior, fit_gp
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
        # a periodic kernel's marginal likelihood is multimodal in the period: about one
        # L-BFGS start in eight reaches linear + periodic's mode on these data
        "inference": {"method": "map", "restarts": 8, "steps": 150},
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
    """Posterior mass = evidence x simplicity prior; a strong prior favours the smaller structure."""
    from priorguard.priors.kernels import StructureSearch
    from priorguard.priors.structure import structure_prior

    rng = np.random.default_rng(3)
    x = rng.random((40, 1))
    y = 2.0 * x[:, 0] + 0.1 * rng.standard_normal(40)
    search = {"search": ["linear", "rbf"], "max_terms": 2, "operators": ["sum"], "evidence": "bic", "simplicity": 3.0}
    spec = GPModel.model_validate({"model": "gp", "kernel": search, "mean": "constant",
                                   "inference": {"method": "map", "steps": 100}})
    post = fit_gp(spec, as_data(x, y), key=jax.random.key(2), feature_ranges=[(0.0, 1.0)])
    report = {r["structure"]: r for r in post.report()}
    assert max(report, key=lambda s: report[s]["posterior"]) == "linear"
    # the reported posterior is exactly evidence x prior, normalised, for this and for a flat prior
    for simplicity in (3.0, 0.0):
        prior = {s.expression: p for s, p in structure_prior(StructureSearch(**{**search, "simplicity": simplicity}),
                                                             dim=1)}
        logp = {s: report[s]["log_evidence"] + math.log(prior[s]) for s in report}
        top = max(logp.values())
        z = sum(math.exp(v - top) for v in logp.values())
        if simplicity == 3.0:
            for s in report:
                np.testing.assert_allclose(report[s]["posterior"], math.exp(logp[s] - top) / z, rtol=1e-9)
        else:
            flat_linear = math.exp(logp["linear"] - top) / z
    assert report["linear"]["posterior"] > flat_linear
