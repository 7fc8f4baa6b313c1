"""Every kind of fit writes a DataTree that ArviZ 1.3's model checks run on.

For each kind -- GP by MAP, NUTS, sparse (inducing points) and kernel structure search; BNN
by NUTS, SVI, ensemble and MAP; a factored world model (one GP per factor of declared
parents, written as one model) -- two small fits of the same kind go through ``az.loo``,
``az.loo_pit``, ``az.compare``, ``arviz_plots.plot_ppc_dist`` and
``arviz_plots.plot_prior_posterior`` (every file has a ``prior`` group: draws of the same
variables as ``posterior`` from their priors) and ``plot_ppc_dist`` of the
``prior_predictive`` group (data each prior draw gives at the training inputs).

What the draws are, per kind (each DataTree says it in its attributes):

* GP MAP and structure search (the most probable structure): Laplace draws of the
  hyperparameters at the MAP point; ``log_likelihood`` is the exact LOO density per draw.
* GP NUTS: the NUTS draws; ``posterior_predictive`` has one replicate per draw.
* Sparse GP: draws of the latent function from the variational posterior ``q`` at the fitted
  hyperparameters (``log_likelihood`` is ``log N(y_i | f_s(x_i), noise^2)``).
* BNN NUTS and SVI: the sampler's / guide's draws.
* BNN ensemble and MAP: a handful of networks is too few draws for PSIS; the DataTree holds
  draws from a mixture of last-layer Laplace approximations, one per network
  (:mod:`priorguard.models.bnn.laplace`), checked below against the exact posterior of a
  linear model.

Kinds the library refuses to fit (NUTS for a sparse GP or a structure search) are asserted
as refusals at the end.
"""

from __future__ import annotations

import warnings

import arviz as az
import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import arviz_plots as azp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from priorguard.models import as_data, fit_bnn, fit_gp  # noqa: E402
from priorguard.models.bnn.laplace import DRAWS  # noqa: E402

N = 30
_NUTS = {"method": "nuts", "warmup": 30, "samples": 30, "chains": 2}
_ENSEMBLE = {"method": "ensemble", "members": 3, "steps": 50, "max_steps": 100}

#: kind -> (spec of fit "a", spec of fit "b"); GP pairs differ in the kernel, BNN pairs in the seed.
KINDS = {
    "gp_map": ({"model": "gp", "kernel": {"kind": "rbf"}, "inference": {"method": "map", "steps": 30}},
               {"model": "gp", "kernel": {"kind": "linear"}, "inference": {"method": "map", "steps": 30}}),
    "gp_nuts": ({"model": "gp", "kernel": {"kind": "rbf"}, "inference": _NUTS},
                {"model": "gp", "kernel": {"kind": "matern52"}, "inference": _NUTS}),
    "gp_sparse": ({"model": "gp", "kernel": {"kind": "rbf"}, "sparse": {"inducing": 8, "batch_size": N, "steps": 30}},
                  {"model": "gp", "kernel": {"kind": "linear"},
                   "sparse": {"inducing": 8, "batch_size": N, "steps": 30}}),
    "gp_search": ({"model": "gp", "kernel": {"search": ["rbf", "linear"], "max_terms": 1},
                   "inference": {"method": "map", "steps": 30}},
                  {"model": "gp", "kernel": {"search": ["matern52", "linear"], "max_terms": 1},
                   "inference": {"method": "map", "steps": 30}}),
    "bnn_nuts": ({"model": "bnn", "hidden": [4], "inference": _NUTS},) * 2,
    "bnn_svi": ({"model": "bnn", "hidden": [4], "inference": {"method": "svi", "steps": 100, "samples": 50}},) * 2,
    "bnn_ensemble": ({"model": "bnn", "hidden": [4], "inference": _ENSEMBLE},) * 2,
    "bnn_map": ({"model": "bnn", "hidden": [4], "inference": {"method": "map", "steps": 50}},) * 2,
    # W with declared parents: one GP per factor, read back as one model (``world.y`` over W's outputs)
    "gp_factored": ({"model": "gp", "kernel": {"kind": "rbf"}, "inference": {"method": "map", "steps": 30},
                     "parents": {"a": ["a"], "b": ["b"]}},
                    {"model": "gp", "kernel": {"kind": "matern52"}, "inference": {"method": "map", "steps": 30},
                     "parents": {"a": ["a"], "b": ["b"]}}),
}
#: the variable each kind's files name their data by
SITE = {kind: "world.y" if kind == "gp_factored" else "terminal.y" for kind in KINDS}


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (N, 1))
    return x, np.sin(6.0 * x) + 0.1 * rng.normal(size=(N, 1))


def _world_data() -> tuple[np.ndarray, np.ndarray]:
    """Features a, b and a one-hot action; the change of a follows a, that of b follows b."""
    rng = np.random.default_rng(1)
    ab = rng.uniform(0.0, 1.0, (N, 2))
    go = rng.integers(0, 2, N).astype(float)
    y = np.stack([np.sin(6.0 * ab[:, 0]) * go, np.cos(4.0 * ab[:, 1])], axis=1) + 0.1 * rng.normal(size=(N, 2))
    return np.c_[ab, go, 1.0 - go], y


def _fit_world(spec: dict, seed: int) -> object:
    from priorguard.models.roles import fit_role
    from priorguard.priors.models import GPModel

    x, y = _world_data()
    return fit_role(GPModel.model_validate(spec), as_data(x, y), key=jax.random.key(seed), role="world",
                    feature_names=["a", "b", "go", "stay"], feature_ranges=[(0.0, 1.0)] * 4,
                    output_names=["delta_a", "delta_b"], num_action_columns=2)


_CACHE: dict[str, tuple[object, object, object]] = {}


def _fits(kind: str) -> tuple[object, object, object]:
    """``(posterior a, DataTree a, DataTree b)`` of a kind, fitted once per module."""
    if kind not in _CACHE:
        x, y = _data()
        out = []
        with warnings.catch_warnings():  # 30 NUTS draws per chain: ESS warnings are expected
            warnings.simplefilter("ignore")
            for seed, spec in enumerate(KINDS[kind]):
                if "parents" in spec:
                    post = _fit_world(spec, seed)
                elif spec["model"] == "gp":
                    post = fit_gp(spec, as_data(x, y), key=jax.random.key(seed), feature_names=["a"],
                                  feature_ranges=[(0.0, 1.0)])
                else:
                    post = fit_bnn(spec, as_data(x, y), key=jax.random.key(seed), site_prefix="terminal")
                out.append((post, post.to_datatree()))
        _CACHE[kind] = (out[0][0], out[0][1], out[1][1])
    return _CACHE[kind]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():  # PSIS's Pareto-k warnings on 30 points are not what is tested
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _groups_share_sample_dims_and_log_likelihood_has_the_observed_dims(kind):
    _, dt, _ = _fits(kind)
    site = SITE[kind]
    observed = dt["observed_data"][site]
    assert observed.dims == ("obs", "output") and observed.shape[0] == N
    assert dt["log_likelihood"][site].dims == ("chain", "draw", *observed.dims)
    assert dt["constant_data"][site.replace(".y", ".x")].dims == ("obs", "feature")
    sizes = {g: (dt[g].sizes["chain"], dt[g].sizes["draw"])
             for g in ("posterior", "posterior_predictive", "log_likelihood")}
    assert len(set(sizes.values())) == 1, sizes
    chains, draws = sizes["posterior"]
    assert chains * draws >= 50, sizes  # enough draws for PSIS's Pareto tail (3 networks are not)
    assert np.all(np.isfinite(dt["log_likelihood"][site].values))


def _loo_has_a_finite_elpd(kind):
    _, dt, _ = _fits(kind)
    loo = _quiet(az.loo, dt, pointwise=True)
    outputs = dt["observed_data"].sizes["output"]
    assert np.isfinite(loo.elpd) and np.isfinite(loo.se) and loo.n_data_points == N * outputs
    assert loo.pareto_k.shape == (N, outputs)


def _loo_pit_is_finite_with_the_observed_shape(kind):
    _, dt, _ = _fits(kind)
    pit = np.asarray(_quiet(az.loo_pit, dt)[SITE[kind]])
    assert pit.shape == dt["observed_data"][SITE[kind]].shape
    assert np.all(np.isfinite(pit)) and np.all((pit >= 0.0) & (pit <= 1.0))
    assert np.ptp(pit) > 0.1  # not one value for every point


def _compare_ranks_two_fits_of_the_kind(kind):
    _, a, b = _fits(kind)
    table = _quiet(az.compare, {"a": a, "b": b})
    assert sorted(table.index) == ["a", "b"]
    assert np.all(np.isfinite(table["elpd"].to_numpy())) and table["rank"].min() == 0
    np.testing.assert_allclose(table["weight"].sum(), 1.0)


def _plot_ppc_dist_draws_the_replicates_and_the_data(kind):
    _, dt, _ = _fits(kind)
    try:
        pc = _quiet(azp.plot_ppc_dist, dt)
        assert pc.viz["predictive_dist"][SITE[kind]].sizes["sample"] == min(50, dt["posterior_predictive"].sizes["draw"]
                                                                              * dt["posterior_predictive"].sizes["chain"])
        assert SITE[kind] in pc.viz["observed_dist"].data_vars
    finally:
        plt.close("all")


def _plot_prior_posterior_overlays_the_prior_group(kind):
    _, dt, _ = _fits(kind)
    prior, post = dt["prior"], dt["posterior"]
    assert set(prior.data_vars) == set(post.data_vars) and prior.sizes["draw"] >= 50
    for name in prior.data_vars:  # the same variables in the same dims and coordinates
        assert prior[name].dims == post[name].dims, name
        for dim in prior[name].dims[2:]:
            np.testing.assert_array_equal(prior[name][dim].values, post[name][dim].values)
    try:
        pc = _quiet(azp.plot_prior_posterior, dt)
        drawn = pc.viz["dist"]
        assert set(drawn.data_vars) == set(post.data_vars)
        assert list(drawn["group"].values) == ["prior", "posterior"]
    finally:
        plt.close("all")


def _prior_predictive_lies_at_the_training_inputs_in_the_targets_units(kind):
    _, dt, _ = _fits(kind)
    observed = dt["observed_data"][SITE[kind]]
    drawn = dt["prior_predictive"][SITE[kind]]
    assert drawn.dims == ("chain", "draw", *observed.dims) and drawn.shape[2:] == observed.shape
    assert drawn.sizes["draw"] == dt["prior"].sizes["draw"] and np.all(np.isfinite(drawn.values))
    # the prior's data, in the data's units: centred near the data, of a spread within an order of
    # magnitude or two of it (a missing rescaling would be off by the targets' scale and mean)
    y = observed.values
    assert abs(float(drawn.mean()) - y.mean()) < 2.0 * y.std()
    assert 0.1 * y.std() < float(drawn.std()) < 30.0 * y.std()
    try:
        pc = _quiet(azp.plot_ppc_dist, dt, group="prior_predictive")
        assert pc.viz["predictive_dist"][SITE[kind]].sizes["sample"] == 50
    finally:
        plt.close("all")


@pytest.mark.parametrize("kind", list(KINDS))
def test_arviz_checks_run_on_the_fits_of(kind):
    """One test per kind, so each kind is fitted once per test process: the groups' dims, then
    az.loo, az.loo_pit, az.compare, plot_ppc_dist and plot_prior_posterior in turn."""
    _groups_share_sample_dims_and_log_likelihood_has_the_observed_dims(kind)
    _loo_has_a_finite_elpd(kind)
    _loo_pit_is_finite_with_the_observed_shape(kind)
    _compare_ranks_two_fits_of_the_kind(kind)
    _plot_ppc_dist_draws_the_replicates_and_the_data(kind)
    _plot_prior_posterior_overlays_the_prior_group(kind)
    _prior_predictive_lies_at_the_training_inputs_in_the_targets_units(kind)


@pytest.mark.parametrize("kind", ["gp_map", "gp_nuts"])
def test_loo_pit_of_an_exact_gp_is_its_closed_form_leave_one_out_pit(kind):
    """Phi((y_i - mu_-i) / sd_-i), the LOO-PIT in closed form at the fit's own hyperparameters:
    az.loo_pit on the file gives it within Monte-Carlo error, with no pull towards 0.5.
    (Replicates from the fit to all data, which saw y_i, pulled every PIT towards 0.5: by 0.040
    (MAP) and 0.038 (NUTS) on average here, against 0.001 and -0.004 from the LOO replicates.)"""
    from scipy.stats import norm

    from priorguard.models.gp.loo import loo_from_theta

    post, dt, _ = _fits(kind)
    st = post.state
    resid, var = loo_from_theta(st.program, moments=True)(st.theta, st.x, st.y, st.y_scale)  # [S, 1, N]
    closed = np.mean(norm.cdf(np.asarray(resid) / np.sqrt(np.asarray(var))), axis=0)[0]  # [N]
    pit = np.asarray(_quiet(az.loo_pit, dt)["terminal.y"])[:, 0]
    assert np.mean(np.abs(pit - closed)) < 0.06, np.c_[pit, closed]
    pull = np.mean((pit - closed) * np.sign(closed - 0.5))  # < 0: nearer 0.5 than the closed form
    assert abs(pull) < 0.02, pull
    assert np.std(closed) > 0.15  # spread over [0, 1]: a test that replicates near y_i would fail


def test_mode_fits_state_their_laplace_draws():
    for kind, networks in (("bnn_ensemble", _ENSEMBLE["members"]), ("bnn_map", 1)):
        _, dt, _ = _fits(kind)
        per_member = -(-DRAWS // networks)
        assert dt.attrs["laplace_draws_per_member"] == per_member
        assert dt["posterior"].sizes["draw"] == networks * per_member
        assert "last-layer Laplace" in dt.attrs["posterior_draws"]


def test_sparse_gp_draws_average_to_its_predictive_density():
    """The q-draws' log-likelihood, averaged over draws, is the variational predictive density."""
    post, dt, _ = _fits("gp_sparse")
    x, y = _data()
    ll = dt["log_likelihood"]["terminal.y"].values[0, :, :, 0]  # [S, N]
    mc = np.logaddexp.reduce(ll, axis=0) - np.log(ll.shape[0])
    w = np.exp(ll - ll.max(0))
    se = w.std(0) / (w.mean(0) * np.sqrt(ll.shape[0]))  # Monte-Carlo error of the log-mean-exp (delta method)
    np.testing.assert_array_less(np.abs(mc - np.asarray(post.log_predictive_density(x, y))), 4 * se + 1e-6)


def test_laplace_draws_of_a_linear_bnn_are_its_exact_posterior():
    """hidden=[] with a fixed noise: the last layer is all of it and the posterior is Gaussian."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2))
    y = (0.5 + x @ np.array([1.0, -2.0]) + 0.8 * rng.normal(size=40))[:, None]
    spec = {"model": "bnn", "hidden": [], "noise": 0.4, "inference": {"method": "map", "steps": 200}}
    post = fit_bnn(spec, as_data(x, y), key=jax.random.key(0))
    dt = post.to_datatree()
    ys = (y[:, 0] - y.mean()) / y.std()  # standardised targets, as the posterior's sites are
    phi = np.hstack([x, np.ones((40, 1))])
    cov = np.linalg.inv(phi.T @ phi / 0.4**2 + np.eye(3))  # Normal(0, 1) priors on w and b
    mean = cov @ phi.T @ ys / 0.4**2
    draws = np.concatenate([dt["posterior"]["world.layer0.w"].values[0, :, :, 0],
                            dt["posterior"]["world.layer0.b"].values[0]], axis=1)  # [S, 3]
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 4 * sd / np.sqrt(len(draws)))
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.3)
    assert dt.attrs["laplace_floored_eigenvalues"] == 0


@pytest.mark.parametrize(("spec", "words"), [
    ({"model": "gp", "kernel": {"kind": "rbf"}, "sparse": {"inducing": 8}, "inference": _NUTS},
     "a sparse GP fits its hyperparameters by MAP"),
    ({"model": "gp", "kernel": {"search": ["rbf"]}, "inference": _NUTS},
     "a kernel structure search fits each structure by MAP"),
])
def test_nuts_sparse_and_nuts_structure_search_are_refused(spec, words):
    """No DataTree to check: the library refuses these fits (NUTS needs an exact GP with one kernel)."""
    x, y = _data()
    with pytest.raises(ValueError, match=words):
        fit_gp(spec, as_data(x, y), key=jax.random.key(0), feature_names=["a"])
