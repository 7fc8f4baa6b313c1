"""NUTS over hyperparameters, the sparse variational GP, and the spec entry point."""

from __future__ import annotations

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.models.base import Posterior, as_data
from priorguard.models.gp import GPPosterior, SparseGPPosterior, fit_exact_gp, fit_gp
from priorguard.models.inference import SamplingWarning
from priorguard.priors.kernels import parse_kernel
from priorguard.priors.models import GPModel, NutsInference, SparseSpec


def test_nuts_posterior_mixes_samples_and_converts_to_arviz():
    RNG = np.random.default_rng(99)
    x = RNG.random((20, 1))
    y = np.sin(6 * x[:, 0]) + 0.1 * RNG.standard_normal(20)
    nuts = NutsInference(method="nuts", warmup=40, samples=40, chains=2)
    with pytest.warns(SamplingWarning) as caught:
        post = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), key=jax.random.key(0), inference=nuts,
                            feature_ranges=[(0.0, 1.0)], max_predictive_samples=40)
    messages = [str(w.message) for w in caught]
    # 40 draws per chain cannot give an ESS of 100 per chain: PyMC's words
    assert "The effective sample size per chain is smaller than 100 for some parameters." in messages
    assert isinstance(post, Posterior) and post.state.weights.shape == (40,)
    pred = post.predict(jnp.asarray(x[:5]))
    # the mixture variance is at least the mean of the component variances
    mean, var, _ = (np.asarray(a) for a in post.sample_moments(jnp.asarray(x[:5])))
    assert np.all(np.asarray(pred.epistemic_var) >= var.mean(0) - 1e-12)
    np.testing.assert_allclose(pred.mean, mean.mean(0), atol=1e-12)
    dt = post.to_datatree()
    assert dt["posterior"]["terminal.kernel.lengthscale"].shape == (2, 40, 1, 1)
    assert set(dt["sample_stats"].data_vars) >= {"diverging", "tree_depth", "lp"}
    assert dt["log_likelihood"]["terminal.y"].shape == (2, 40, 20, 1)  # per (obs, output)
    assert dt["posterior_predictive"]["terminal.y"].shape == (2, 40, 20, 1)  # one replicate per draw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(dt)
    # exact GP leave-one-out at the posterior draws, integrated by PSIS: close to the MAP's
    assert np.isfinite(loo.elpd) and abs(loo.elpd - float(np.sum(post.loo_log_density().mean(0)))) < 3.0
    f = post.sample_functions(jax.random.key(1), 8)(jnp.asarray(x[:3]))
    assert f.shape == (8, 3, 1) and np.all(np.isfinite(np.asarray(f)))


def test_nuts_on_repeated_inputs_samples_the_full_data_posterior():
    """NUTS runs on the grouped inputs; its log joint at every draw is the full-data one."""
    import functools

    from numpyro.infer.util import potential_energy, unconstrain_fn

    from priorguard.models.gp.data import group_repeated_inputs
    from priorguard.models.gp.objective import gp_model

    rng = np.random.default_rng(7)
    grid = rng.random((6, 1))
    x = grid[rng.integers(0, 6, 120)]
    y = np.sin(6 * x[:, 0]) + 0.2 * rng.standard_normal(120)
    nuts = NutsInference(method="nuts", warmup=30, samples=10, chains=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        post = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), key=jax.random.key(0), inference=nuts,
                            feature_ranges=[(0.0, 1.0)])
    prep, program = post.prep, post.program
    assert group_repeated_inputs(program, prep.x, prep.y) is not None  # the grouped path ran
    model = functools.partial(gp_model, program)
    args = (jnp.asarray(prep.x), jnp.asarray(prep.y[:, 0]))
    for s in range(10):
        draw = {k: jnp.asarray(v[0, s, 0]) for k, v in post.record.samples.items()}
        full = potential_energy(model, args, {}, unconstrain_fn(model, args, {}, draw))
        np.testing.assert_allclose(-post.record.sample_stats["lp"][0, s], full, rtol=1e-9)
    assert np.ptp(post.record.sample_stats["lp"][0]) > 0  # the chain moved


def test_sparse_gp_agrees_with_exact_gp():
    RNG = np.random.default_rng(100)
    n = 800
    x = RNG.random((n, 2))
    y = np.stack([np.sin(6 * x[:, 0]) + 0.3 * x[:, 1], np.cos(4 * x[:, 1])], 1) + 0.1 * RNG.standard_normal((n, 2))
    spec = GPModel.model_validate({"model": "gp", "kernel": {"kind": "rbf"},
                                   "sparse": {"inducing": 48, "batch_size": 256, "steps": 100,
                                              "learning_rate": 0.02}})
    post = fit_gp(spec, as_data(x, y), key=jax.random.key(0), feature_ranges=[(0.0, 1.0)] * 2)
    assert isinstance(post, SparseGPPosterior) and isinstance(post, Posterior)
    # 256 points: the shapes of the sparse fit's own exact-GP start, so its compiled objective is reused
    exact = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x[:256], y[:256]), key=jax.random.key(1),
                         feature_ranges=[(0.0, 1.0)] * 2)
    xq = jnp.asarray(RNG.random((30, 2)))
    ps, pe = post.predict(xq), exact.predict(xq)
    # the exact GP sees 256 of the points: agreement within its own posterior uncertainty
    assert bool(jnp.all(jnp.abs(ps.mean - pe.mean) < 4 * jnp.sqrt(pe.epistemic_var) + 0.01))
    np.testing.assert_allclose(np.sqrt(ps.aleatoric_var[0]), 0.1, rtol=0.2)
    assert bool(jnp.all(ps.epistemic_var < pe.epistemic_var * 3 + 1e-4))
    # pathwise draws of the SVGP reproduce its mean
    f = post.sample_functions(jax.random.key(2), 1000, num_features=256)(xq[:4])
    se = np.asarray(f.std(0)) / np.sqrt(1000)
    assert np.all(np.abs(np.asarray(f.mean(0) - ps.mean[:4])) < 5 * se + 1e-9)
    np.testing.assert_allclose(f.var(0), ps.epistemic_var[:4], rtol=0.3)  # sd of a variance from 1000 draws: ~5%
    lpd = post.log_predictive_density(xq, ps.mean)
    assert lpd.shape == (30,) and np.all(np.isfinite(np.asarray(lpd)))
    dt = post.to_datatree()
    # draws of the latent function from q at each training input, per (obs, output)
    assert dt["log_likelihood"]["terminal.y"].shape == (1, 100, n, 2)
    assert dt["posterior"].sizes["draw"] == dt["posterior_predictive"].sizes["draw"] == 100
    assert np.isfinite(float(dt["sample_stats"]["lp"].values[0, 0]))


def test_fit_gp_dispatches_on_the_spec():
    RNG = np.random.default_rng(101)
    names = ["a", "b", "c"]
    x = RNG.random((40, 3)) * [1.0, 10.0, 5.0]
    y = np.sin(3 * x[:, 0]) + 0.1 * x[:, 1]
    ranges = {"a": (0.0, 1.0), "b": (0.0, 10.0)}
    spec = GPModel.model_validate({"model": "gp", "features": ["a", "b"],
                                   "kernel": {"kind": "matern52", "active_dims": ["a", "b"]},
                                   "inference": {"method": "map", "steps": 50}})
    post = fit_gp(spec, as_data(x, y), key=jax.random.key(0), feature_names=names, feature_ranges=ranges,
                  site_prefix="world")
    assert isinstance(post, GPPosterior) and post.input_dim == 3
    assert "world/kernel/lengthscale" in post.map_hyperparameters()
    np.testing.assert_allclose(post.prep.scale, [1.0, 10.0])
    sparse_spec = spec.model_copy(update={"sparse": SparseSpec(inducing=16, batch_size=32, steps=20)})
    with pytest.raises(ValueError, match="MAP"):
        fit_gp(sparse_spec.model_copy(update={"inference": NutsInference(method="nuts")}), as_data(x, y),
               key=jax.random.key(2), feature_names=names)
