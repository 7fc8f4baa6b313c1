"""Exact GP: closed forms, kernel parity with GPJax, analytic gradient, compilation, jitter."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard._compile import TRACE_COUNTS
from priorguard.models.base import Posterior, as_data
from priorguard.models.gp import GPNumericalError, JitterWarning, condition_gp, fit_exact_gp
from priorguard.models.gp import _gpjax
from priorguard.models.gp import data as gp_data
from priorguard.models.gp.data import GroupedTargets, group_repeated_inputs, prepare_data
from priorguard.models.gp.kernels import compile_kernel, compile_program
from priorguard.models.gp.linalg import (
    POTRI_MIN_N,
    cholesky_with_jitter,
    inverse_from_cholesky,
    log_marginal_likelihood,
)
from priorguard.models.gp.objective import map_objective
from priorguard.priors.distributions import Prior
from priorguard.priors.kernels import parse_kernel
from priorguard.priors.models import MapInference

RNG = np.random.default_rng(20261101)


# --- numpy reference kernels (independent of the library) ----------------------------


def np_rbf(a, b, ls, var):
    d = (a[:, None, :] - b[None, :, :]) / ls
    return var * np.exp(-0.5 * np.sum(d * d, -1))


def np_periodic(a, b, ls, var, period):
    s = np.sin(np.pi * (a[:, None, :] - b[None, :, :]) / period) / ls
    return var * np.exp(-0.5 * np.sum(s * s, -1))


def np_linear(a, b, var):
    return var * a @ b.T


def np_posterior(kfn, x, y, xs, noise, mean=0.0):
    k = kfn(x, x) + noise**2 * np.eye(len(x))
    ks = kfn(xs, x)
    mu = mean + ks @ np.linalg.solve(k, y - mean)
    cov = kfn(xs, xs) - ks @ np.linalg.solve(k, ks.T)
    return mu, cov


UNIT = [(0.0, 1.0), (0.0, 1.0)]


def test_rbf_fixed_hyperparameters_match_closed_form():
    x, xs = RNG.random((25, 2)), RNG.random((9, 2))
    y = np.sin(5 * x[:, 0]) + x[:, 1] ** 2 + 0.05 * RNG.standard_normal(25)
    ls = np.array([0.3, 0.7])
    post = condition_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), noise=0.1,
                        hyperparameters={"kernel/lengthscale": ls, "kernel/variance": 1.7},
                        feature_ranges=UNIT, standardize=False)
    assert isinstance(post, Posterior)
    mu, cov = np_posterior(lambda a, b: np_rbf(a, b, ls, 1.7), x, y, xs, 0.1)
    pred = post.predict(jnp.asarray(xs))
    np.testing.assert_allclose(pred.mean[:, 0], mu, atol=1e-8, rtol=0)
    np.testing.assert_allclose(pred.epistemic_var[:, 0], np.diag(cov), atol=1e-8, rtol=0)
    np.testing.assert_allclose(pred.aleatoric_var[:, 0], 0.01, atol=1e-12)
    assert post.jitter == 0.0


def test_sum_kernel_with_active_dims_matches_closed_form():
    names = ["a", "b"]
    x, xs = RNG.random((30, 2)), RNG.random((7, 2))
    y = np.sin(6 * x[:, 0]) + 0.5 * x[:, 1] + 0.05 * RNG.standard_normal(30)
    kernel = parse_kernel({"kind": "sum", "terms": [
        {"kind": "rbf", "active_dims": ["a"], "lengthscale": 0.25, "variance": 1.3},
        {"kind": "linear", "active_dims": [1], "variance": 0.6},
        {"kind": "periodic", "lengthscale": 0.8, "variance": 0.4, "period": 0.35, "ard": False},
    ]})
    post = condition_gp(kernel, as_data(x, y), noise=0.07, feature_names=names, feature_ranges=UNIT,
                        standardize=False)

    def kfn(a, b):
        return (np_rbf(a[:, :1], b[:, :1], 0.25, 1.3) + np_linear(a[:, 1:], b[:, 1:], 0.6)
                + np_periodic(a, b, 0.8, 0.4, 0.35))

    mu, cov = np_posterior(kfn, x, y, xs, 0.07)
    pred = post.predict(jnp.asarray(xs))
    np.testing.assert_allclose(pred.mean[:, 0], mu, atol=1e-8, rtol=0)
    np.testing.assert_allclose(pred.epistemic_var[:, 0], np.diag(cov), atol=1e-8, rtol=0)


def test_input_and_target_transforms_are_undone():
    """Raw features scaled by declared ranges, targets standardised, both undone in predict."""
    low, high = np.array([-2.0, 10.0]), np.array([3.0, 14.0])
    x = low + (high - low) * RNG.random((20, 2))
    xs = low + (high - low) * RNG.random((5, 2))
    y = 40.0 + 8.0 * np.cos(x[:, 0]) + 0.3 * RNG.standard_normal(20)
    ls = np.array([0.2, 0.5])
    post = condition_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), noise=0.2,
                        hyperparameters={"kernel/lengthscale": ls, "kernel/variance": 1.0},
                        feature_ranges=list(zip(low, high)), standardize=True)
    u, us = (x - low) / (high - low), (xs - low) / (high - low)
    m, s = y.mean(), y.std()
    mu, cov = np_posterior(lambda a, b: np_rbf(a, b, ls, 1.0), u, (y - m) / s, us, 0.2)
    pred = post.predict(jnp.asarray(xs))
    np.testing.assert_allclose(pred.mean[:, 0], m + s * mu, atol=1e-8 * s, rtol=0)
    np.testing.assert_allclose(pred.epistemic_var[:, 0], s**2 * np.diag(cov), atol=1e-8 * s**2, rtol=0)
    np.testing.assert_allclose(pred.aleatoric_var[:, 0], s**2 * 0.04, rtol=1e-12)
    # log predictive density is the Gaussian density in raw units
    lpd = post.log_predictive_density(jnp.asarray(xs), jnp.asarray(y[:5, None]))
    sd = np.sqrt(s**2 * (np.diag(cov) + 0.04))
    ref = -0.5 * np.log(2 * np.pi * sd**2) - 0.5 * ((y[:5] - m - s * mu) / sd) ** 2
    np.testing.assert_allclose(lpd, ref, atol=1e-8)


KERNELS = [
    {"kind": "rbf", "lengthscale": 0.4, "variance": 1.2},
    {"kind": "matern12", "active_dims": [0], "lengthscale": 0.3, "variance": 0.8},
    {"kind": "matern32", "lengthscale": 0.5, "variance": 1.1},
    {"kind": "matern52", "ard": False, "lengthscale": 0.6, "variance": 0.9},
    {"kind": "rational_quadratic", "lengthscale": 0.4, "variance": 1.0, "alpha": 1.7},
    {"kind": "periodic", "lengthscale": 0.7, "variance": 0.5, "period": 0.3},
    {"kind": "linear", "active_dims": [1], "variance": 0.6},
    {"kind": "polynomial", "degree": 3, "variance": 0.5, "shift": 0.2},
    {"kind": "product", "terms": [{"kind": "rbf", "active_dims": [0], "lengthscale": 0.3, "variance": 1.0},
                                  {"kind": "linear", "active_dims": [1], "variance": 0.9}]},
]


@pytest.mark.parametrize("spec", KERNELS, ids=lambda s: s["kind"])
def test_kernel_matches_gpjax(spec):
    tree = compile_kernel(parse_kernel(spec), feature_names=["a", "b"], site_prefix="t")
    theta = {h.site: jnp.full(h.shape, h.fixed) for h in tree.all_hypers()}
    x1, x2 = jnp.asarray(RNG.random((6, 2))), jnp.asarray(RNG.random((4, 2)))
    np.testing.assert_allclose(tree.gram(theta, x1, x2, same=False),
                               _gpjax.gpjax_gram(tree, theta, x1, x2), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tree.gram_diag(theta, x1, white=True),
                               np.diag(_gpjax.gpjax_gram(tree, theta, x1, x1)), rtol=1e-12, atol=1e-14)


def test_white_kernel_is_noise_not_signal():
    tree = compile_kernel(parse_kernel({"kind": "white", "variance": 0.3}), feature_names=["a"],
                          site_prefix="t")
    theta = {h.site: jnp.full(h.shape, h.fixed) for h in tree.all_hypers()}
    x = jnp.asarray(RNG.random((5, 1)))
    np.testing.assert_allclose(tree.gram(theta, x, x, same=True), _gpjax.gpjax_gram(tree, theta, x, x))
    x = RNG.random((12, 1))
    y = RNG.standard_normal(12)
    post = condition_gp(parse_kernel({"kind": "sum", "terms": [
        {"kind": "rbf", "lengthscale": 0.3, "variance": 1.0}, {"kind": "white", "variance": 0.3}]}),
        as_data(x, y), noise=0.1, feature_ranges=[(0.0, 1.0)], standardize=False)
    mu, cov = np_posterior(lambda a, b: np_rbf(a, b, 0.3, 1.0), x, y, x[:3], math.sqrt(0.01 + 0.3))
    pred = post.predict(jnp.asarray(x[:3]))
    np.testing.assert_allclose(pred.mean[:, 0], mu, atol=1e-8)
    np.testing.assert_allclose(pred.epistemic_var[:, 0], np.diag(cov), atol=1e-8)
    np.testing.assert_allclose(pred.aleatoric_var[:, 0], 0.31, atol=1e-12)


def test_log_marginal_likelihood_matches_gpjax_and_numpy():
    tree = compile_kernel(parse_kernel(KERNELS[-1]), feature_names=["a", "b"], site_prefix="t")
    theta = {h.site: jnp.full(h.shape, h.fixed) for h in tree.all_hypers()}
    x = jnp.asarray(RNG.random((15, 2)))
    y = jnp.asarray(RNG.standard_normal(15))
    k = tree.gram(theta, x, x, same=True) + 0.09 * jnp.eye(15)
    ours = log_marginal_likelihood(k, y)
    sign, logdet = np.linalg.slogdet(np.asarray(k))
    ref = -0.5 * (y @ np.linalg.solve(k, y) + logdet + 15 * np.log(2 * np.pi))
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # GPJax's Prior adds jitter 1e-6 to the kernel diagonal
    ours_jittered = log_marginal_likelihood(k + 1e-6 * jnp.eye(15), y)
    np.testing.assert_allclose(ours_jittered, _gpjax.gpjax_conjugate_mll(tree, theta, 0.3, x, y), rtol=1e-10)


def test_analytic_gradient_equals_autodiff():
    kernel = parse_kernel({"kind": "sum", "terms": [
        {"kind": "matern52"}, {"kind": "product", "terms": [{"kind": "periodic", "active_dims": [0]},
                                                            {"kind": "linear"}]}]})
    prep = prepare_data(as_data(RNG.random((40, 2)), RNG.standard_normal((40, 2))))
    program = compile_program(kernel, noise=None, mean="constant", feature_names=prep.feature_names,
                              site_prefix="t")
    analytic = map_objective(program, 2, analytic=True)
    autodiff = map_objective(program, 2, analytic=False)
    u = jnp.asarray(RNG.uniform(-1.0, 1.0, analytic.size))
    x, y = jnp.asarray(prep.x), jnp.asarray(prep.y)
    va, ga = analytic.value_and_grad(u, x, y)
    vb, gb = jax.value_and_grad(autodiff.total)(u, x, y)
    np.testing.assert_allclose(va, vb, rtol=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-6, atol=1e-9)


def repeated_inputs(n, unique, rng):
    """``n`` rows over ``unique`` distinct 2-D inputs (every one used), with two noisy outputs."""
    grid = rng.random((unique, 2))
    x = grid[np.concatenate([np.arange(unique), rng.integers(0, unique, n - unique)])]
    y = np.stack([np.sin(4 * x[:, 0]), x[:, 1] - x[:, 0]], axis=1) + 0.2 * rng.standard_normal((n, 2))
    return x, y


@pytest.mark.parametrize("use_prior", [True, False])
@pytest.mark.parametrize(("unique", "kernel", "noise_floor"), [
    (25, {"kind": "rbf"}, 0.0),
    (25, {"kind": "rbf"}, 0.3),  # the floored noise enters the within-group terms too
    (70, {"kind": "sum", "terms": [{"kind": "matern52"}, {"kind": "linear", "active_dims": [1]}]}, 0.0),  # padded
])
def test_grouped_repeated_inputs_give_the_same_objective_and_gradient(use_prior, unique, kernel, noise_floor):
    rng = np.random.default_rng(unique)
    prep = prepare_data(as_data(*repeated_inputs(300, unique, rng)))
    program = compile_program(parse_kernel(kernel), noise=None, mean="constant",
                              feature_names=prep.feature_names, site_prefix="t", noise_floor=noise_floor)
    xg, groups = group_repeated_inputs(program, prep.x, prep.y)
    assert int(np.sum(groups.counts > 0)) == unique and xg.shape[0] >= unique and groups.counts.sum() == 300
    if unique == 70:
        assert xg.shape[0] > unique  # padded to a shape bucket
    objective = map_objective(program, 2, use_prior=use_prior)
    for seed in range(3):
        u = jnp.asarray(np.random.default_rng(seed).uniform(-1.5, 1.5, objective.size))
        full = objective.value_and_grad(u, jnp.asarray(prep.x), jnp.asarray(prep.y))
        grouped = objective.value_and_grad(u, jnp.asarray(xg), GroupedTargets(*map(jnp.asarray, groups)))
        np.testing.assert_allclose(grouped[0], full[0], rtol=1e-10)
        np.testing.assert_allclose(grouped[1], full[1], rtol=1e-7, atol=1e-8)


def test_map_fit_on_repeated_inputs_matches_the_ungrouped_fit(monkeypatch):
    x, y = repeated_inputs(240, 12, np.random.default_rng(3))
    # without the noise floor: it flattens the objective in the noise, and the two fits
    # then stop apart by more than the tolerance of the same objective
    fit = dict(inference=MapInference(method="map", steps=200), feature_ranges=[(0.0, 1.0)] * 2, noise_floor=0.0)
    grouped = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), key=jax.random.key(0), **fit)
    monkeypatch.setattr(gp_data, "GROUP_FRACTION", 0.0)  # never group
    full = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), key=jax.random.key(0), **fit)
    for site, value in full.hyperparameters.items():
        np.testing.assert_allclose(grouped.hyperparameters[site], value, rtol=1e-4, err_msg=site)
    q = jnp.asarray(np.random.default_rng(4).random((5, 2)))
    np.testing.assert_allclose(grouped.predict(q).mean, full.predict(q).mean, rtol=1e-4, atol=1e-6)


def test_inputs_are_not_grouped_with_white_noise_or_few_repeats():
    rng = np.random.default_rng(8)
    x, y = repeated_inputs(200, 10, rng)
    white = compile_program(parse_kernel({"kind": "sum", "terms": [{"kind": "rbf"}, {"kind": "white"}]}),
                            noise=None, mean="zero", feature_names=("a", "b"), site_prefix="t")
    plain = compile_program(parse_kernel({"kind": "rbf"}), noise=None, mean="zero",
                            feature_names=("a", "b"), site_prefix="t")
    assert group_repeated_inputs(white, x, y) is None  # white noise acts per observation, not per input
    assert group_repeated_inputs(plain, x, y) is not None
    assert group_repeated_inputs(plain, rng.random((200, 2)), y) is None  # no repeats


def test_second_fit_with_same_shapes_does_not_recompile():
    kernel = parse_kernel({"kind": "matern32"})
    x = RNG.random((30, 3))
    fit = dict(inference=MapInference(method="map", steps=30))
    first = fit_exact_gp(kernel, as_data(x, np.sin(4 * x[:, 0])), key=jax.random.key(0), **fit)
    first.predict(jnp.asarray(x[:4]))
    before = dict(TRACE_COUNTS)
    assert before["gp/map_objective"] >= 1
    second = fit_exact_gp(kernel, as_data(x[::-1], np.cos(3 * x[:, 1])), key=jax.random.key(1), **fit)
    second.predict(jnp.asarray(x[:4]))
    for name in ("gp/map_objective", "gp/condition", "gp/predict"):
        assert TRACE_COUNTS[name] == before[name], name


def test_fits_over_differently_named_features_share_compiled_code():
    """A sweep over T's features (same shapes, other names) traces the fit programs once."""
    kernel = parse_kernel({"kind": "rbf"})
    x = RNG.random((30, 1))
    fit = dict(inference=MapInference(method="map", steps=30), feature_ranges=[(0.0, 1.0)])
    first = fit_exact_gp(kernel, as_data(x, np.sin(4 * x[:, 0])), key=jax.random.key(0),
                         feature_names=["sweep_a"], **fit)
    first.predict(jnp.asarray(x[:4]))
    before = dict(TRACE_COUNTS)
    second = fit_exact_gp(kernel, as_data(x, np.cos(3 * x[:, 0])), key=jax.random.key(1),
                          feature_names=["sweep_b"], **fit)
    second.predict(jnp.asarray(x[:4]))
    assert second.prep.feature_names == ("sweep_b",)
    for name in ("gp/map_objective", "gp/condition"):
        assert TRACE_COUNTS[name] == before[name], name


def test_near_duplicate_inputs_get_jitter_not_nan():
    x = 0.5 + 1e-6 * np.arange(40)[:, None]
    y = np.sin(x[:, 0]) + 1e-3 * RNG.standard_normal(40)
    with pytest.warns(JitterWarning, match="jitter"):
        post = condition_gp(parse_kernel({"kind": "rbf", "lengthscale": 0.5, "variance": 1.0}),
                            as_data(x, y), noise=1e-8, feature_ranges=[(0.0, 1.0)])
    assert post.jitter > 0
    pred = post.predict(jnp.asarray(np.linspace(0.0, 1.0, 7)[:, None]))
    assert np.all(np.isfinite(np.asarray(pred.mean))) and np.all(np.asarray(pred.epistemic_var) >= 0)
    draws = post.sample_functions(jax.random.key(0), 8)(jnp.asarray(x[:5]))
    assert np.all(np.isfinite(np.asarray(draws)))
    # a MAP fit on the same points stays finite too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JitterWarning)
        fitted = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), key=jax.random.key(2),
                              inference=MapInference(method="map", steps=40))
    assert np.all(np.isfinite(np.asarray(fitted.predict(jnp.asarray(x[:3])).mean)))


def test_indefinite_covariance_is_a_clear_error():
    chol, jitter = cholesky_with_jitter(-jnp.eye(4))
    assert not np.all(np.isfinite(np.asarray(chol)))
    with pytest.raises(GPNumericalError, match="not positive definite"):
        condition_gp(parse_kernel({"kind": "rbf", "lengthscale": 0.3}), as_data(RNG.random((6, 1)), np.ones(6)),
                     noise=0.1, hyperparameters={"kernel/variance": -3.0})


def test_multi_output_and_feature_selection():
    rng = np.random.default_rng(5)
    names = ["pos", "vel", "junk"]
    x = rng.random((35, 3))
    y = np.stack([np.sin(5 * x[:, 0]), x[:, 1] ** 2 - x[:, 0]], axis=1) + 0.05 * rng.standard_normal((35, 2))
    kernel = parse_kernel({"kind": "sum", "terms": [{"kind": "rbf"}, {"kind": "linear", "active_dims": ["vel"]}]})
    post = fit_exact_gp(kernel, as_data(x, y), key=jax.random.key(3), feature_names=names, features=["pos", "vel"],
                        noise=Prior(dist="LogNormal", params={
                            "loc": Prior(dist="Normal", params={"loc": -2.0, "scale": 0.5}), "scale": 0.5}),
                        mean="constant",
                        inference=MapInference(method="map", steps=60))
    assert (post.input_dim, post.output_dim) == (3, 2)
    pred = post.predict(jnp.asarray(x[:6]))
    assert pred.mean.shape == (6, 2)
    # the unused column does not matter
    x2 = x[:6].copy()
    x2[:, 2] = 123.0
    np.testing.assert_allclose(post.predict(jnp.asarray(x2)).mean, pred.mean, atol=1e-12)
    hp = post.map_hyperparameters()
    assert hp["terminal/kernel/terms/0/lengthscale"].shape == (2, 2)
    assert hp["terminal/mean/constant"].shape == (2,)
    # the hyperprior's own site is fitted too, per output
    assert post.hyperparameters["terminal/noise/loc"].shape == (1, 1, 2)
    # each output fits well on its own training points
    assert float(jnp.max(jnp.abs(pred.mean - y[:6]))) < 0.2
    dt = post.to_datatree()
    ls = dt["posterior"]["terminal.kernel.terms.0.lengthscale"]
    assert ls.dims == ("chain", "draw", "output", "terminal.kernel.terms.0.lengthscale.feature")
    assert list(ls["terminal.kernel.terms.0.lengthscale.feature"].values) == ["pos", "vel"]
    assert dt["log_likelihood"]["terminal.y"].shape == (1, 100, 35, 2)  # Laplace draws; per (obs, output)
    assert math.isfinite(dt.attrs["elpd_loo_exact"])


def test_bad_inputs_fail_at_the_boundary():
    kernel = parse_kernel({"kind": "rbf", "active_dims": ["nope"]})
    with pytest.raises(ValueError, match="nope"):
        fit_exact_gp(kernel, as_data(RNG.random((5, 1)), np.ones(5)), key=jax.random.key(0), feature_names=["a"])
    with pytest.raises(ValueError, match="finite"):
        fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(np.full((5, 1), np.nan), np.ones(5)),
                     key=jax.random.key(0))
    with pytest.raises(ValueError, match="high > low"):
        prepare_data(as_data(RNG.random((5, 1)), np.ones(5)), feature_ranges=[(1.0, 0.0)])


def test_lapack_inverse_path_at_large_n():
    """N >= POTRI_MIN_N takes the LAPACK potri callback on CPU: exact inverse, consistent gradient."""
    n = POTRI_MIN_N + 6
    prep = prepare_data(as_data(RNG.random((n, 2)), RNG.standard_normal(n)))
    program = compile_program(parse_kernel({"kind": "rbf"}), noise=None, mean="zero",
                              feature_names=prep.feature_names, site_prefix="t")
    chol = jnp.linalg.cholesky(program.training_covariance(
        {"t/kernel/lengthscale": jnp.array([0.3, 0.4]), "t/kernel/variance": 1.0, "t/noise": 0.3},
        jnp.asarray(prep.x)))
    inv = np.tril(np.asarray(jax.jit(inverse_from_cholesky)(chol)))
    ref = np.linalg.inv(np.asarray(chol @ chol.T))
    np.testing.assert_allclose(inv, np.tril(ref), atol=1e-9 * np.abs(ref).max())
    u = jnp.asarray([0.2, -0.3, 0.1, -1.0])
    x, y = jnp.asarray(prep.x), jnp.asarray(prep.y)
    objective = map_objective(program, 1, analytic=True)
    value, grad = objective.value_and_grad(u, x, y)
    # the gradient along a random direction against central differences of the value
    direction = jnp.asarray(RNG.standard_normal(4))
    h = 1e-5
    fd = (objective.value_and_grad(u + h * direction, x, y)[0]
          - objective.value_and_grad(u - h * direction, x, y)[0]) / (2 * h)
    np.testing.assert_allclose(float(grad @ direction), float(fd), rtol=1e-6)


def test_numeric_prior_mean_is_where_the_gp_reverts_away_from_data():
    """``mean = 0.0`` (raw units): far from data the prediction returns to 0, not to the targets' average."""
    from priorguard.models.gp import fit_gp
    from priorguard.priors.models import GPModel

    x = np.linspace(0.0, 0.3, 12)[:, None]
    y = 2.0 + 0.1 * np.sin(20 * x)  # targets average ~2
    far = jnp.asarray([[0.95]])
    means = {}
    for mean in ("zero", 0.0, -1.0):
        spec = GPModel(model="gp", mean=mean, kernel={"kind": "rbf", "lengthscale": 0.05, "variance": 1.0},
                       inference={"method": "map", "steps": 30})
        post = fit_gp(spec, as_data(x, y), key=jax.random.key(0), feature_ranges=[(0.0, 1.0)])
        means[mean] = float(post.predict(far).mean[0, 0])
        near = post.predict(jnp.asarray(x[3:4]))
        np.testing.assert_allclose(float(near.mean[0, 0]), y[3, 0], atol=0.05)  # data still fitted
    assert abs(means["zero"] - y.mean()) < 1e-3
    assert abs(means[0.0]) < 1e-3 and abs(means[-1.0] + 1.0) < 1e-3
    prep = prepare_data(as_data(x, y), prior_mean=0.0, feature_ranges=[(0.0, 1.0)])
    np.testing.assert_allclose(prep.y_mean, [0.0])
    np.testing.assert_allclose(prep.y_scale, [np.sqrt(np.mean(y**2))])


def test_a_learned_noise_is_floored_in_quadrature_and_a_fixed_one_is_not():
    from priorguard.models.gp.objective import theta_from_sites
    from priorguard.priors.models import NOISE_FLOOR
    from priorguard.priors.models import GPModel

    assert GPModel(model="gp").noise_floor == NOISE_FLOOR  # the spec's default is the library's
    learned = compile_program(parse_kernel({"kind": "rbf"}), noise=None, mean="zero",
                              feature_names=["a"], site_prefix="t", noise_floor=0.3)
    theta = theta_from_sites(learned, {"t/kernel/lengthscale": jnp.array([0.5]), "t/kernel/variance": jnp.array(1.0),
                                       "t/noise": jnp.array(0.4)}, ())
    assert float(theta["t/noise"]) == pytest.approx(0.5)  # sqrt(0.4^2 + 0.3^2)
    fixed = compile_program(parse_kernel({"kind": "rbf"}), noise=0.001, mean="zero",
                            feature_names=["a"], site_prefix="t", noise_floor=0.3)
    assert fixed.noise_floor == 0.0
    with pytest.raises(ValueError, match="noise_floor"):
        compile_program(parse_kernel({"kind": "rbf"}), noise=None, mean="zero", feature_names=["a"],
                        site_prefix="t", noise_floor=-1.0)
    # deterministic labels on repeated inputs: the MAP noise runs to the box bound without the floor
    x = np.repeat(np.linspace(0.0, 1.0, 6), 20)[:, None]
    y = np.sin(4 * x[:, 0])
    fits = {floor: fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), key=jax.random.key(0),
                                feature_ranges=[(0.0, 1.0)], noise_floor=floor) for floor in (0.0, NOISE_FLOOR)}
    q = jnp.asarray(x[:1])
    scale2 = float(np.squeeze(fits[0.0].state.y_scale)) ** 2
    assert float(np.squeeze(fits[0.0].predict(q).aleatoric_var)) < 1e-6 * scale2
    assert float(np.squeeze(fits[NOISE_FLOOR].predict(q).aleatoric_var)) >= NOISE_FLOOR**2 * scale2 * (1 - 1e-9)
    assert fits[NOISE_FLOOR].to_datatree().attrs["noise_floor"] == NOISE_FLOOR


def test_constant_targets_keep_prior_scale_uncertainty_away_from_the_data():
    """y = 3.7 everywhere: its std is rounding error (about 4e-16), not a scale; T must stay
    uncertain off the data, or a veto built on it could never fire."""
    x = np.linspace(0.0, 1.0, 20)[:, None]
    y = np.full(20, 3.7) + np.asarray([0.0, 4.4e-16] * 10)
    post = condition_gp(parse_kernel({"kind": "rbf", "lengthscale": 0.1, "variance": 1.0}), as_data(x, y),
                        noise=0.01, feature_ranges=[(0.0, 5.0)])
    far = np.sqrt(np.asarray(post.predict(jnp.asarray([[4.0]])).epistemic_var))[0, 0]
    near = np.sqrt(np.asarray(post.predict(jnp.asarray([[0.5]])).epistemic_var))[0, 0]
    assert far > 0.5 and near < 0.1 * far
    np.testing.assert_allclose(np.asarray(post.predict(jnp.asarray([[0.5]])).mean), 3.7, atol=1e-6)
