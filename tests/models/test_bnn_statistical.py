"""Statistical tests of the BNN backend against known answers.

Each runs at a reduced size by default; ``pytest -m slow`` runs the
full-size forms marked ``slow``, and ``PRIORGUARD_FULL=1`` scales up the others. Tolerances come from Monte-Carlo
error (ESS-based standard errors, binomial bands).
"""

from __future__ import annotations

import math
import os
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from priorguard._compile import TRACE_COUNTS
from priorguard.models.inference import SamplingWarning
from priorguard.models.base import as_data
from priorguard.models.bnn import fit_bnn
from priorguard.priors.models import BNNModel

FULL = os.environ.get("PRIORGUARD_FULL") == "1"


# --- conjugate Bayesian linear regression ----------------------------------------


def _linear_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = 0.5 + x @ np.array([1.0, -2.0]) + 0.8 * rng.normal(size=n)
    return x, y[:, None]


def _conjugate(x: np.ndarray, ys: np.ndarray, *, noise: float, w_scale: float, b_scale: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and covariance of (w, b) for ys = x w + b + N(0, noise^2)."""
    phi = np.hstack([x, np.ones((x.shape[0], 1))])
    prior_prec = np.diag([1.0 / w_scale**2] * x.shape[1] + [1.0 / b_scale**2])
    cov = np.linalg.inv(phi.T @ phi / noise**2 + prior_prec)
    mean = cov @ phi.T @ ys[:, 0] / noise**2
    return mean, cov


def _conjugate_log_evidence(x: np.ndarray, ys: np.ndarray, *, noise: float, w_scale: float,
                            b_scale: float) -> float:
    phi = np.hstack([x, np.ones((x.shape[0], 1))])
    prior_cov = np.diag([w_scale**2] * x.shape[1] + [b_scale**2])
    k = phi @ prior_cov @ phi.T + noise**2 * np.eye(x.shape[0])
    _, logdet = np.linalg.slogdet(k)
    return float(-0.5 * ys[:, 0] @ np.linalg.solve(k, ys[:, 0]) - 0.5 * logdet
                 - 0.5 * x.shape[0] * math.log(2 * math.pi))


@pytest.fixture(scope="module")
def linear_nuts():
    n = 100 if FULL else 30
    x, y = _linear_data(n, seed=0)
    spec = BNNModel(
        model="bnn", hidden=[], noise=0.4,
        weights={"dist": "Normal", "loc": 0.0, "scale": 1.0},
        bias={"dist": "Normal", "loc": 0.0, "scale": 1.5},
        inference={"method": "nuts", "warmup": 500 if FULL else 300, "samples": 2000 if FULL else 500,
                   "chains": 2},
    )
    with warnings.catch_warnings():  # R-hat at 1.01 is a coin toss at this size
        warnings.simplefilter("ignore", SamplingWarning)
        post = fit_bnn(spec, as_data(x, y), key=jax.random.key(0))
    return spec, x, y, post


def test_linear_nuts_matches_conjugate_posterior(linear_nuts):
    """hidden=[] under NUTS = Bayesian linear regression: means and sds within 3 MCSE."""
    _, x, y, post = linear_nuts
    ys = (y - y.mean(0)) / y.std(0)  # the documented target standardisation
    mean, cov = _conjugate(x, ys, noise=0.4, w_scale=1.0, b_scale=1.5)
    sd = np.sqrt(np.diag(cov))
    s = post.samples()
    theta = np.concatenate([np.asarray(s["world/layer0/w"])[..., 0], np.asarray(s["world/layer0/b"])], axis=-1)
    ds = xr.Dataset({"theta": (["chain", "draw", "coef"], theta)})
    ess_mean = np.asarray(az.ess(ds, method="mean")["theta"])
    ess_sd = np.asarray(az.ess(ds, method="sd")["theta"])
    assert np.all(ess_mean > 100), ess_mean
    mc_mean = theta.reshape(-1, 3).mean(0)
    mc_sd = theta.reshape(-1, 3).std(0)
    # MCSE of a mean is sd / sqrt(ESS); of a Normal's sd it is sd / sqrt(2 ESS).
    np.testing.assert_array_less(np.abs(mc_mean - mean), 3 * sd / np.sqrt(ess_mean))
    np.testing.assert_array_less(np.abs(mc_sd - sd), 3 * sd / np.sqrt(2 * ess_sd))


def test_linear_nuts_datatree_loo_and_pointwise_density(linear_nuts):
    _, x, y, post = linear_nuts
    dt = post.to_datatree()
    assert set(dt.children) >= {"posterior", "sample_stats", "log_likelihood", "observed_data",
                                "posterior_predictive", "constant_data"}
    assert dt["posterior"]["world.layer0.w"].dims == ("chain", "draw", "feature", "output")
    assert dt["posterior"]["world.layer0.w"].shape == (2, post.fits[0].samples["world/layer0/w"].shape[1], 2, 1)
    for name in ("diverging", "tree_depth", "energy", "lp", "n_steps"):
        assert dt["sample_stats"][name].dims == ("chain", "draw")
    assert dt["log_likelihood"]["world.y"].dims == ("chain", "draw", "obs", "output")  # observed_data's dims
    loo = az.loo(dt)
    assert np.isfinite(loo.elpd) and loo.pareto_k.shape == (x.shape[0], 1)
    # log_likelihood is per row and in original units: its log-mean-exp over draws
    # is the pointwise predictive density of the same posterior.
    ll = np.asarray(dt["log_likelihood"]["world.y"]).reshape(-1, x.shape[0])
    lpd = np.logaddexp.reduce(ll, axis=0) - math.log(ll.shape[0])
    np.testing.assert_allclose(np.asarray(post.log_predictive_density(x, y)), lpd, rtol=1e-10, atol=1e-10)


def test_nuts_second_fit_same_shapes_compiles_nothing(linear_nuts):
    spec, x, y, first = linear_nuts
    first.predict(x)
    x2, y2 = _linear_data(x.shape[0], seed=1)
    before = dict(TRACE_COUNTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        post = fit_bnn(spec, as_data(x2, y2), key=jax.random.key(7))
    post.predict(x2)
    assert dict(TRACE_COUNTS) == before


# --- Laplace evidence and the depth posterior ------------------------------------


def _depth_spec(strength: float) -> BNNModel:
    return BNNModel(
        model="bnn", hidden=[6], noise=0.4,
        speed={"kind": "depth", "max_depth": 2, "strength": strength},
        inference={"method": "map", "steps": 150, "restarts": 2},
    )


@pytest.fixture(scope="module")
def linear_1d():
    rng = np.random.default_rng(3)
    x = np.linspace(-1.0, 1.0, 40)[:, None]
    y = 0.8 * x + 0.3 * rng.normal(size=x.shape)
    return x, y


def test_depth_posterior_moves_to_shallow_as_speed_strength_grows(linear_1d):
    x, y = linear_1d
    strengths = [0.0, 0.5, 1.0, 2.0, 4.0]
    mean_depth, p_linear = [], []
    for strength in strengths:
        post = fit_bnn(_depth_spec(strength), as_data(x, y), key=jax.random.key(11))
        probs = post.depth_posterior
        assert set(probs) == {0, 1, 2} and math.isclose(sum(probs.values()), 1.0, rel_tol=1e-9)
        mean_depth.append(sum(d * p for d, p in probs.items()))
        p_linear.append(probs[0])
    assert np.all(np.diff(mean_depth) <= 1e-12), mean_depth
    assert np.all(np.diff(p_linear) >= -1e-12), p_linear
    assert mean_depth[-1] < mean_depth[0] - 0.05, mean_depth
    assert p_linear[-1] > 0.5, p_linear


def test_laplace_evidence_of_linear_depth_is_exact(linear_1d):
    """Depth 0 with known noise is linear-Gaussian: Laplace is exact, in original units."""
    x, y = linear_1d
    post = fit_bnn(_depth_spec(1.0), as_data(x, y), key=jax.random.key(11))
    ys = (y - y.mean(0)) / y.std(0)
    exact = _conjugate_log_evidence(x, ys, noise=0.4, w_scale=1.0, b_scale=1.0) - x.shape[0] * math.log(y.std())
    fit0 = post.fit_at(0)
    assert fit0.evidence_method == "laplace"
    assert fit0.log_evidence == pytest.approx(exact, abs=1e-6)
    assert post.fit_at(1).evidence_method == "laplace"
    corrected = fit_bnn(_depth_spec(1.0), as_data(x, y), key=jax.random.key(11), symmetry_correction=True)
    per_layer = math.lgamma(7.0) + 6 * math.log(2.0)  # 6 tanh units: 6! orders x 2^6 signs
    for depth in (0, 1, 2):
        assert corrected.fit_at(depth).log_evidence == pytest.approx(
            post.fit_at(depth).log_evidence + depth * per_layer, abs=1e-9)
    assert corrected.fit_at(1).evidence_method == "laplace+symmetry"
    prior = np.asarray(post.depth_prior_probs)
    ev = np.array([f.log_evidence for f in post.fits])
    expected = np.exp(np.log(prior) + ev - np.max(np.log(prior) + ev))
    np.testing.assert_allclose(post.depth_probs, expected / expected.sum(), rtol=1e-9)


# --- horseshoe sparsity --------------------------------------------------------------


def _sparse_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8 inputs, only the first matters: y = sin(3 x0) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 8))
    y = np.sin(3.0 * x[:, :1]) + 0.1 * rng.normal(size=(n, 1))
    return x, y


def _svi_spec(**extra: object) -> BNNModel:
    return BNNModel(model="bnn", hidden=[8],
                    inference={"method": "svi", "steps": 3000 if FULL else 1500, "learning_rate": 0.02,
                               "samples": 400},
                    **extra)


@pytest.fixture(scope="module")
def sparse_fits():
    x, y = _sparse_data(200 if FULL else 80, seed=5)
    normal = fit_bnn(_svi_spec(), as_data(x, y), key=jax.random.key(2))
    horseshoe = fit_bnn(_svi_spec(simplicity={"kind": "horseshoe", "global_scale": 0.1}), as_data(x, y),
                        key=jax.random.key(2))
    return x, y, normal, horseshoe


def _irrelevant_to_relevant(post) -> float:
    w = np.abs(np.asarray(post.samples()["world/layer0/w"]))  # [1, S, 8, H]
    row = w.mean(axis=(0, 1)).sum(axis=1)  # E|w| summed over hidden units, per input
    return float(row[1:].mean() / row[0])


def test_horseshoe_shrinks_irrelevant_input_weights_more_than_normal(sparse_fits):
    _, _, normal, horseshoe = sparse_fits
    r_normal = _irrelevant_to_relevant(normal)
    r_horseshoe = _irrelevant_to_relevant(horseshoe)
    assert r_horseshoe < 0.5 * r_normal, (r_horseshoe, r_normal)
    assert "world/layer0/lambda" in horseshoe.samples() and "world/layer0/tau" in horseshoe.samples()


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_svi_second_fit_same_shapes_compiles_nothing(sparse_fits):
    x, y, first, _ = sparse_fits
    first.predict(x)
    first.log_predictive_density(x, y)
    x2, y2 = _sparse_data(x.shape[0], seed=6)
    before = dict(TRACE_COUNTS)
    post = fit_bnn(_svi_spec(), as_data(x2, y2), key=jax.random.key(3))
    post.predict(x2)
    post.log_predictive_density(x2, y2)
    post.sample_functions(jax.random.key(4), 10)(x2)
    assert dict(TRACE_COUNTS) == before
    assert np.isfinite(az.loo(post.to_datatree()).elpd)


# --- calibration ------------------------------------------------------------------


def _smooth_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = sin(3 x) + N(0, 0.2^2), x ~ U(-1, 1): the known function."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 1))
    return x, np.sin(3.0 * x) + 0.2 * rng.normal(size=(n, 1))


@pytest.mark.parametrize("size", [pytest.param("full", marks=pytest.mark.slow), "reduced"])
def test_predictive_interval_coverage(size):
    """Central 90% predictive intervals (NUTS) cover fresh data from the true function at a binomial rate.

    Bayesian coverage is exact on average over training sets; for one training
    set it wobbles by about 1-2 points (e.g. the noise estimate). The test set is
    kept at a size where the binomial band (3 sigma) is wider than that.
    """
    full = size == "full"
    x, y = _smooth_data(200 if full else 60, seed=21)
    spec = BNNModel(model="bnn", hidden=[10],
                    inference={"method": "nuts", "warmup": 500 if full else 250,
                               "samples": 500 if full else 250, "chains": 2})
    with warnings.catch_warnings():  # BNN posteriors are multimodal: R-hat flags it, rightly
        warnings.simplefilter("ignore", SamplingWarning)
        post = fit_bnn(spec, as_data(x, y), key=jax.random.key(4))
    n_test = 500 if full else 400
    xt, yt = _smooth_data(n_test, seed=22)
    # PIT u = P(Y <= y | data) under the posterior mixture, exactly over the posterior draws.
    fit = post.fit_at()
    f = np.asarray(jax.vmap(fit.apply, in_axes=(0, None))(fit.draw_params, jnp.asarray(xt)))  # [S, N, 1]
    noise = np.asarray(fit.draw_params["noise"])[:, None, :]
    from scipy.stats import norm

    pit = norm.cdf((yt[None] - f) / noise).mean(axis=0)
    covered = int(np.sum((pit >= 0.05) & (pit <= 0.95)))
    band = 3.0 * math.sqrt(n_test * 0.9 * 0.1)
    assert abs(covered - 0.9 * n_test) <= band, (covered / n_test, n_test)
