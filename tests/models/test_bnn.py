"""BNN backend: model structure, input handling, function draws, ensembles."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.handlers import seed, substitute, trace

from priorguard.models.inference import NutsProgram, SamplingWarning, warn_on_diagnostics
from priorguard.models.base import FunctionDraws, Posterior, as_data
from priorguard.models.bnn import BNN, DepthMixtureApply, MLPApply, bnn_model, fit_bnn
from priorguard.priors.models import BNNModel

MAP = {"method": "map", "steps": 150, "restarts": 2}


def _sin_data(n: int = 40, seed_: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed_)
    x = np.linspace(-1.0, 1.0, n)[:, None]
    return x, np.sin(2.0 * x) + 0.1 * rng.normal(size=x.shape)


# --- the model ----------------------------------------------------------------------


def _site_values(model, x, y, *, abstract=False):
    """Site values of one prior draw (jitted or shape-only: eager numpyro is slow to warm up)."""

    def values():
        tr = trace(seed(model, 0)).get_trace(x, y)
        return {k: v["value"] for k, v in tr.items() if v["type"] in ("sample", "deterministic")}

    return jax.eval_shape(values) if abstract else jax.jit(values)()


def _site_types(model, x):
    types = {}

    def run():
        tr = trace(seed(model, 0)).get_trace(x, None)
        types.update({k: v["type"] for k, v in tr.items()})
        return 0

    jax.eval_shape(run)
    return types



def test_site_names_are_stable_and_shapes_follow_the_spec():
    spec = BNNModel(model="bnn", hidden=[5, 3])
    model = bnn_model(spec, in_dim=4, out_dim=2, site_prefix="world")
    shapes = {k: v.shape for k, v in _site_values(model, jnp.zeros((7, 4)), jnp.zeros((7, 2)),
                                                   abstract=True).items() if k != "types"}
    assert shapes == {
        "world/layer0/w": (4, 5), "world/layer0/b": (5,),
        "world/layer1/w": (5, 3), "world/layer1/b": (3,),
        "world/layer2/w": (3, 2), "world/layer2/b": (2,),
        "world/noise": (2,), "world/y": (7, 2),
    }
    assert _site_types(model, jnp.zeros((7, 4)))["world/y"] == "sample"


def test_horseshoe_sites_are_non_centred():
    spec = BNNModel(model="bnn", hidden=[3],
                    simplicity={"kind": "regularized_horseshoe", "global_scale": 0.1})
    model = bnn_model(spec, in_dim=2, out_dim=1)
    types = _site_types(model, jnp.zeros((4, 2)))
    assert types["world/layer0/w"] == "deterministic"
    for leaf in ("tau", "lambda", "w_raw", "c2"):
        assert types[f"world/layer0/{leaf}"] == "sample"
    rng = np.random.default_rng(0)
    raw, lam = rng.normal(size=(2, 3)), np.exp(rng.normal(size=(2, 3)))
    tau, c2 = 0.3, 2.5
    shapes = _site_values(model, jnp.zeros((4, 2)), None, abstract=True)
    given = {k: np.ones(v.shape) for k, v in shapes.items() if types[k] == "sample"}
    given.update({"world/layer0/w_raw": raw, "world/layer0/lambda": lam, "world/layer0/tau": tau,
                  "world/layer0/c2": c2})
    tr = trace(substitute(seed(model, 0), data=given)).get_trace(jnp.zeros((4, 2)), None)
    w = tr["world/layer0/w"]["value"]
    lam_t = jnp.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    np.testing.assert_allclose(w, raw * tau * lam_t, rtol=1e-12)


def test_hyperprior_on_weight_scale_is_sampled_per_layer_non_centred():
    spec = BNNModel(model="bnn", hidden=[3],
                    weights={"dist": "Normal", "loc": 0.0, "scale": {"dist": "HalfNormal", "scale": 1.0}})
    types = _site_types(bnn_model(spec, in_dim=2, out_dim=1), jnp.zeros((4, 2)))
    assert types["world/layer0/w/scale"] == "sample"
    assert types["world/layer0/w_decentered"] == "sample"
    assert types["world/layer0/w"] == "deterministic"


def test_mlp_apply_is_the_forward_pass():
    rng = np.random.default_rng(0)
    p = {"layer0/w": rng.normal(size=(2, 3)), "layer0/b": rng.normal(size=3),
         "layer1/w": rng.normal(size=(3, 1)), "layer1/b": rng.normal(size=1)}
    x = rng.normal(size=(5, 2))
    expected = np.tanh(x @ p["layer0/w"] + p["layer0/b"]) @ p["layer1/w"] + p["layer1/b"]
    np.testing.assert_allclose(MLPApply("tanh", 1)(p, x), expected, rtol=1e-12)
    assert hash(MLPApply("tanh", 1)) == hash(MLPApply("tanh", 1))


# --- input handling -------------------------------------------------------------------


def test_bad_inputs_are_rejected_before_any_tracing():
    x, y = _sin_data()
    data = as_data(x, y)
    spec = BNNModel(model="bnn", hidden=[4], inference=MAP)
    with pytest.raises(ValueError, match=r"feature_ranges must be \[D, 2\]"):
        fit_bnn(spec, data, key=jax.random.key(0), feature_ranges=[[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="lo < hi"):
        fit_bnn(spec, data, key=jax.random.key(0), feature_ranges=[[1.0, 0.0]])
    with pytest.raises(ValueError, match="spec.features names 2 inputs"):
        fit_bnn(spec.model_copy(update={"features": ["a", "b"]}), data, key=jax.random.key(0))
    with pytest.raises(ValueError, match="finite"):
        fit_bnn(spec, as_data(np.full_like(x, np.nan), y), key=jax.random.key(0))
    with pytest.raises(TypeError, match="Data"):
        fit_bnn(spec, (x, y), key=jax.random.key(0))


def test_scaling_is_folded_into_draws():
    """Draws in original units = standardised-space network on scaled inputs, un-standardised."""
    x, y = _sin_data()
    x = 3.0 * x + 5.0
    y = 10.0 * y - 4.0
    ranges = [[2.0, 8.0]]
    post = fit_bnn(BNNModel(model="bnn", hidden=[6], noise=0.4, inference=MAP), as_data(x, y),
                   key=jax.random.key(1), feature_ranges=ranges)
    assert isinstance(post, Posterior)
    s = {k: np.asarray(v)[0, 0] for k, v in post.samples().items()}
    xs = (x - 2.0) / 6.0
    f_std = np.tanh(xs @ s["world/layer0/w"] + s["world/layer0/b"]) @ s["world/layer1/w"] + s["world/layer1/b"]
    expected = f_std * y.std() + y.mean()
    draws = post.sample_functions(jax.random.key(2), 1)
    np.testing.assert_allclose(np.asarray(draws(jnp.asarray(x)))[0], expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(draws.params["noise"]), 0.4 * y.std(), rtol=1e-12)
    pred = post.predict(x)
    np.testing.assert_allclose(pred.aleatoric_var, (0.4 * y.std()) ** 2, rtol=1e-12)
    np.testing.assert_array_equal(pred.epistemic_var, 0.0)  # MAP is a point estimate
    with pytest.raises(ValueError, match=r"x must be \[N, 1\]"):
        post.predict(jnp.zeros((3, 2)))


# --- function draws ----------------------------------------------------------------


@pytest.fixture(scope="module")
def depth_mixture():
    """A posterior averaged over depths 0..2 (MAP per depth, Laplace evidence)."""
    x, y = _sin_data()
    spec = BNNModel(model="bnn", hidden=[6], noise=0.4, inference=MAP,
                    speed={"kind": "depth", "max_depth": 2, "strength": 0.5})
    return x, fit_bnn(spec, as_data(x, y), key=jax.random.key(11))


@pytest.fixture(scope="module")
def ensemble():
    """Two outputs with different noise (0.05 and 0.4): one network, noise per output."""
    x, _ = _sin_data()
    rng = np.random.default_rng(1)
    y = np.hstack([np.sin(2.0 * x) + 0.05 * rng.normal(size=x.shape),
                   np.cos(2.0 * x) + 0.4 * rng.normal(size=x.shape)])
    spec = BNNModel(model="bnn", hidden=[6],
                    inference={"method": "ensemble", "members": 4, "steps": 500, "learning_rate": 0.03})
    return x, y, BNN(spec).fit(as_data(x, y), key=jax.random.key(5))


def test_same_draw_same_input_same_output(depth_mixture):
    x, post = depth_mixture
    assert len([p for p in post.depth_probs if p > 1e-6]) >= 2, post.depth_posterior
    draws = post.sample_functions(jax.random.key(3), 16)
    assert isinstance(draws, FunctionDraws) and isinstance(draws.apply_fn, DepthMixtureApply)
    xq = jnp.linspace(-2.0, 2.0, 9)[:, None]
    a, b = draws(xq), draws(xq)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.jit(lambda d, v: d(v))(draws, xq), a)
    for i in (0, 7, 15):
        np.testing.assert_allclose(draws.one(i, xq), a[i], rtol=1e-12)
        np.testing.assert_allclose(draws.one(jnp.asarray(i), xq[:3]), a[i, :3], rtol=1e-12)
    # per_draw: draw s at its own inputs
    np.testing.assert_allclose(draws.per_draw(jnp.broadcast_to(xq, (16, *xq.shape))), a, rtol=1e-12)
    # the same key gives the same worlds
    np.testing.assert_array_equal(post.sample_functions(jax.random.key(3), 16)(xq), a)


def test_mean_of_draws_matches_predict_mean_under_depth_mixing(depth_mixture):
    x, post = depth_mixture
    xq = jnp.linspace(-1.5, 1.5, 7)[:, None]
    n = 4000
    f = np.asarray(post.sample_functions(jax.random.key(4), n)(xq))
    pred = post.predict(xq)
    se = np.sqrt(np.asarray(pred.epistemic_var) / n)
    assert np.all(np.asarray(pred.epistemic_var) > 0)  # the depths disagree
    np.testing.assert_array_less(np.abs(f.mean(0) - np.asarray(pred.mean)), 4 * se + 1e-9)
    np.testing.assert_allclose(f.var(0), pred.epistemic_var, rtol=0.15)


def test_draws_of_all_samples_average_to_predict_mean(ensemble):
    x, _, post = ensemble
    draws = post.sample_functions(jax.random.key(0), 4)  # every member once
    assert isinstance(draws.apply_fn, MLPApply)
    pred = post.predict(x)
    f = np.asarray(draws(jnp.asarray(x)))
    np.testing.assert_allclose(f.mean(0), pred.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f.var(0), pred.epistemic_var, rtol=1e-8, atol=1e-14)


def test_ensemble_members_differ_and_fit_each_output(ensemble):
    x, y, post = ensemble
    assert post.fit_at().num_draws == 4 and post.output_dim == 2
    assert post.samples()["world/noise"].shape == (1, 4, 2)
    pred = post.predict(x)
    assert pred.mean.shape == pred.epistemic_var.shape == pred.aleatoric_var.shape == (x.shape[0], 2)
    assert float(jnp.mean(pred.epistemic_var)) > 0.0
    truth = np.hstack([np.sin(2.0 * x), np.cos(2.0 * x)])
    rmse = np.sqrt(np.mean((np.asarray(pred.mean) - truth) ** 2, axis=0))
    np.testing.assert_array_less(rmse, [0.1, 0.3])
    noise_sd = np.sqrt(np.asarray(pred.aleatoric_var[0]))
    assert noise_sd[1] > 2.0 * noise_sd[0], noise_sd
    lpd = post.log_predictive_density(x, y)
    assert lpd.shape == (x.shape[0],) and bool(jnp.all(jnp.isfinite(lpd)))
    dt = post.to_datatree()
    # 4 networks are too few draws for PSIS: 25 last-layer Laplace draws around each
    assert dt["posterior"]["world.layer0.w"].sizes["draw"] == 100
    assert dt["posterior"]["world.noise"].dims == ("chain", "draw", "output")
    assert dt["posterior_predictive"]["world.y"].shape == (1, 100, x.shape[0], 2)
    assert "sample_stats" not in dt.children
    # the hidden layer and the noise stay at each network's values
    first = dt["posterior"]["world.layer0.w"].values[0, ::25]
    np.testing.assert_array_equal(first, np.asarray(post.samples()["world/layer0/w"])[0])
    np.testing.assert_array_equal(np.unique(dt["posterior"]["world.noise"].values[0], axis=0),
                                  np.unique(np.asarray(post.samples()["world/noise"])[0], axis=0))


def test_mixture_log_density_is_the_weighted_mixture(depth_mixture):
    x, post = depth_mixture
    y = np.sin(2.0 * x)
    per_depth = []
    for f in post.fits:
        mu = f.apply({k: v[0] for k, v in f.draw_params.items()}, jnp.asarray(x))
        sd = f.draw_params["noise"][0]
        per_depth.append(-0.5 * ((y - mu) / sd) ** 2 - jnp.log(sd) - 0.5 * math.log(2 * math.pi))
    expected = np.logaddexp.reduce(
        [np.log(p) + np.asarray(ll[:, 0]) for p, ll in zip(post.depth_probs, per_depth)], axis=0)
    np.testing.assert_allclose(post.log_predictive_density(x, y), expected, rtol=1e-10)
    dt = post.to_datatree()
    assert dt.attrs["depth"] == post.map_depth
    np.testing.assert_allclose(dt["depth_posterior"]["posterior"], post.depth_probs)


# --- diagnostics ----------------------------------------------------------------------


def test_sampler_warnings_use_pymc_words():
    import xarray as xr

    rng = np.random.default_rng(0)
    good = xr.Dataset({"a": (["chain", "draw"], rng.normal(size=(2, 500)))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = warn_on_diagnostics(good, np.zeros((2, 500), bool))
    assert figures["divergences"] == 0 and figures["max_rhat"] < 1.01
    stuck = np.cumsum(rng.normal(size=(2, 500)), axis=1) + np.array([[0.0], [30.0]])
    bad = xr.Dataset({"a": (["chain", "draw"], stuck)})
    diverging = np.zeros((2, 500), bool)
    diverging[0, :3] = True
    with pytest.warns(SamplingWarning) as record:
        warn_on_diagnostics(bad, diverging)
    messages = [str(r.message) for r in record]
    assert messages == [
        "There were 3 divergences after tuning. Increase `target_accept` or reparameterize.",
        "The rhat statistic is larger than 1.01 for some parameters. This indicates problems during sampling.",
        "The effective sample size per chain is smaller than 100 for some parameters.",
    ]


def test_nuts_program_is_numpyros_nuts():
    """Same model and key: NutsProgram draws what MCMC(NUTS(model)) draws (before rounding diverges)."""
    from numpyro.infer import MCMC, NUTS

    model = bnn_model(BNNModel(model="bnn", hidden=[]), in_dim=2, out_dim=1)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(20, 2)))
    y = x @ jnp.asarray([[1.0], [-0.5]]) + 0.3 * jnp.asarray(rng.normal(size=(20, 1)))
    key = jax.random.key(3)
    program = NutsProgram(model, warmup=20, samples=5, chains=2, target_accept=0.8, max_tree_depth=10)
    out = program.run(key, x, y)
    mcmc = MCMC(NUTS(model), num_warmup=20, num_samples=5, num_chains=2, chain_method=program.chain_method,
                progress_bar=False)
    mcmc.run(key, x, y, extra_fields=("num_steps", "diverging"))
    for name, value in mcmc.get_samples(group_by_chain=True).items():
        np.testing.assert_allclose(out["samples"][name], value, rtol=1e-8, atol=1e-10)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    np.testing.assert_array_equal(out["stats"]["num_steps"], extra["num_steps"])
    if jax.local_device_count() >= 2:
        assert program.chain_method == "parallel"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nuts", "svi"])
def test_speed_prior_evidence_under_sampling_methods(method):
    """NUTS (Laplace at a polished draw) and SVI (ELBO) also give a depth posterior."""
    x, y = _sin_data(30)
    inference = ({"method": "nuts", "warmup": 150, "samples": 150, "chains": 2} if method == "nuts"
                 else {"method": "svi", "steps": 3000, "learning_rate": 0.02})
    spec = BNNModel(model="bnn", hidden=[4], inference=inference,
                    speed={"kind": "depth", "max_depth": 1, "strength": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        post = fit_bnn(spec, as_data(x, y), key=jax.random.key(0))
    assert set(post.depth_posterior) == {0, 1}
    assert math.isclose(sum(post.depth_posterior.values()), 1.0, rel_tol=1e-9)
    expected = "laplace" if method == "nuts" else "elbo"
    for f in post.fits:
        assert f.evidence_method == expected and np.isfinite(f.log_evidence)
    # a curve that a line cannot follow: depth 1 wins despite the speed prior
    assert post.map_depth == 1
    draws = post.sample_functions(jax.random.key(1), 50)
    assert draws(jnp.asarray(x)).shape == (50, x.shape[0], 1)


def test_docstring_examples_run():
    import doctest

    import priorguard.models.bnn as bnn
    import priorguard.models.bnn.fit as bnn_fit

    results = [doctest.testmod(m, optionflags=doctest.ELLIPSIS) for m in (bnn, bnn_fit)]
    assert results[0].attempted >= 8 and results[1].attempted >= 5
    assert all(r.failed == 0 for r in results)


@pytest.mark.slow
def test_low_rank_guide_fits():
    x, y = _sin_data()
    spec = BNNModel(model="bnn", hidden=[4],
                    inference={"method": "svi", "guide": "lowrank", "steps": 2000, "learning_rate": 0.02})
    post = fit_bnn(spec, as_data(x, y), key=jax.random.key(0))
    pred = post.predict(x)
    assert float(jnp.mean((pred.mean - np.sin(2.0 * x)) ** 2)) < 0.01
    assert float(jnp.min(pred.epistemic_var)) > 0.0


def test_an_ensemble_goes_on_until_it_stops_improving():
    """Rounds of `steps` continue while the fit improves; the diagnostics say what ended them."""
    x, _ = _sin_data()
    y = np.sin(2.0 * x)
    few = {"method": "ensemble", "members": 2, "steps": 20, "learning_rate": 0.03}
    post = fit_bnn(BNNModel(model="bnn", hidden=[6], noise=0.1, inference={**few, "max_steps": 4000}),
                   as_data(x, y), key=jax.random.key(2))
    spent = post.fit_at().diagnostics["optimiser_steps"]
    assert 20 < spent < 4000 and post.fit_at().diagnostics["converged"] == 1.0
    short = fit_bnn(BNNModel(model="bnn", hidden=[6], noise=0.1, inference={**few, "max_steps": 40}),
                    as_data(x, y), key=jax.random.key(2))
    assert short.fit_at().diagnostics["optimiser_steps"] == 40 and short.fit_at().diagnostics["converged"] == 0.0
    # the longer fit is the better one
    mse = lambda p: float(np.mean((np.asarray(p.predict(jnp.asarray(x)).mean)[:, 0] - y[:, 0]) ** 2))
    assert mse(post) < mse(short)
    with pytest.raises(ValueError, match="max_steps"):
        BNNModel(model="bnn", hidden=[6], inference={**few, "max_steps": 10})
