"""MAP GP DataTrees carry Laplace draws, so ArviZ's LOO, model comparison and LOO-PIT run on them."""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.models.base import as_data
from priorguard.models.gp import fit_gp
from priorguard.models.gp.laplace import laplace_samples
from priorguard.models.gp.objective import map_objective, objective_inputs
from priorguard.priors.kernels import parse_kernel
from priorguard.priors.models import GPModel


def _data(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1))
    return x, np.sin(6 * x) + 0.1 * rng.normal(size=(n, 1))


@pytest.fixture(scope="module")
def fits():
    x, y = _data()
    out = {}
    for kind in ("rbf", "linear"):
        spec = GPModel(model="gp", kernel=parse_kernel({"kind": kind}))
        out[kind] = fit_gp(spec, as_data(x, y), key=jax.random.PRNGKey(0), feature_names=["a"],
                           site_prefix="terminal")
    return out


def test_laplace_covariance_is_the_inverse_hessian_of_the_log_joint(fits):
    """The draws' covariance against a Hessian made another way (second differences of the value)."""
    post = fits["rbf"]
    st, prep, u = post.state, post.prep, np.asarray(post.record.optimizer["u_flat"])
    samples, _, info = laplace_samples(st.program, prep, u, use_prior=True, num_draws=4000,
                                       key=jax.random.PRNGKey(3))
    objective = map_objective(st.program, 1, use_prior=True)
    x, y = objective_inputs(st.program, prep)
    f = lambda v: float(objective.value(jnp.asarray(v), x, y))  # noqa: E731
    h, p = 1e-3, u.size
    hess = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            ei, ej = np.eye(p)[i] * h, np.eye(p)[j] * h
            hess[i, j] = (f(u + ei + ej) - f(u + ei - ej) - f(u - ei + ej) + f(u - ei - ej)) / (4 * h * h)
    # the draws in unconstrained space: every site of this program is log-transformed (positive)
    unconstrained = np.concatenate([np.log(samples[k].reshape(4000, -1)) for k in sorted(samples)], axis=1)
    np.testing.assert_allclose(np.cov(unconstrained.T), np.linalg.inv(hess), rtol=0.15, atol=1e-3)
    assert info["laplace_flat_directions"] == 0


def test_az_loo_and_compare_run_on_map_fits_and_rank_them(fits):
    trees = {kind: post.to_datatree() for kind, post in fits.items()}
    for dt in trees.values():
        assert dt["posterior"].sizes["draw"] == dt["posterior_predictive"].sizes["draw"] == 100
        assert dt["log_likelihood"].sizes["draw"] == 100
        loo = az.loo(dt)
        # integrating the hyperparameters costs little against the exact LOO at the MAP point
        assert abs(loo.elpd - dt.attrs["elpd_loo_exact"]) < 2.0 + 2.0 * loo.p
    table = az.compare(trees)
    assert list(table.index) == ["rbf", "linear"]  # sin(6x) is not a line
    pit = az.loo_pit(trees["rbf"])
    values = np.asarray(pit["terminal.y"])
    assert values.shape == (120, 1) and np.all((values > -1e-9) & (values < 1 + 1e-9))


def test_az_loo_and_loo_pit_run_on_multi_output_bnn_fits():
    """log_likelihood has observed_data's dims (obs, output), so az.loo_pit can pair them.
    (An ensemble's draws are its few members: PSIS needs more than 5 to fit its tail.)"""
    inference = {"method": "svi", "steps": 300, "samples": 100}
    from priorguard.models.bnn import fit_bnn
    from priorguard.priors.models import BNNModel

    x, y1 = _data(80, seed=1)
    y = np.concatenate([y1, 0.5 * x], axis=1)
    spec = BNNModel.model_validate({"model": "bnn", "hidden": [8], "inference": inference})
    post = fit_bnn(spec, as_data(x, y), key=jax.random.key(0), site_prefix="world",
                   output_names=["delta_a", "delta_b"])
    dt = post.to_datatree()
    ll, observed = dt["log_likelihood"]["world.y"], dt["observed_data"]["world.y"]
    assert ll.dims[2:] == observed.dims == ("obs", "output")
    assert np.isfinite(az.loo(dt).elpd)
    pit = np.asarray(az.loo_pit(dt)["world.y"])
    assert pit.shape == (80, 2) and np.all((pit > -1e-9) & (pit < 1 + 1e-9))


def test_multi_output_gp_log_likelihood_pairs_with_its_observed_data():
    x, y1 = _data(60, seed=2)
    y = np.concatenate([y1, 2.0 * x], axis=1)
    post = fit_gp(GPModel(model="gp"), as_data(x, y), key=jax.random.PRNGKey(0), feature_names=["a"],
                  site_prefix="world", output_names=["delta_a", "delta_b"])
    dt = post.to_datatree()
    assert dt["log_likelihood"]["world.y"].dims[2:] == dt["observed_data"]["world.y"].dims == ("obs", "output")
    # the per-output terms add up to the joint exact LOO at the MAP point
    np.testing.assert_allclose(float(np.sum(np.asarray(post.loo_log_density()))), dt.attrs["elpd_loo_exact"])
    pit = np.asarray(az.loo_pit(dt)["world.y"])
    assert pit.shape == (60, 2) and np.isfinite(az.loo(dt).elpd)
