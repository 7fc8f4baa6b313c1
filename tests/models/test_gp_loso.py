"""Leave-one-state-out cross-validation of exact GPs: every copy of an input held out at once."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from arviz_stats.base.array import array_stats

from priorguard.models.base import as_data
from priorguard.models.gp import condition_gp, leave_one_state_out
from priorguard.priors.kernels import parse_kernel

RNG = np.random.default_rng(20261202)
LOW, HIGH = np.array([-2.0, 10.0]), np.array([3.0, 14.0])
COUNTS = [1, 2, 3, 4, 1, 5]


def np_rbf(a, b, ls, var):
    d = (a[:, None, :] - b[None, :, :]) / ls
    return var * np.exp(-0.5 * np.sum(d * d, -1))


def repeated_data():
    states = LOW + (HIGH - LOW) * RNG.random((len(COUNTS), 2))
    x = np.repeat(states, COUNTS, axis=0)
    y = 40.0 + 8.0 * np.cos(x[:, 0]) + 0.5 * x[:, 1] + 0.3 * RNG.standard_normal(len(x))
    perm = RNG.permutation(len(x))  # copies need not be adjacent
    return states, x[perm], y[perm]


def condition(x, y, ls, noise=0.2):
    return condition_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), noise=noise,
                        hyperparameters={"kernel/lengthscale": ls, "kernel/variance": 1.0},
                        feature_ranges=list(zip(LOW, HIGH)), standardize=True)


def model_units(post, x, y):
    st = post.state
    return (x - np.asarray(st.low)) / np.asarray(st.scale), (y - float(st.y_mean[0])) / float(st.y_scale[0])


def held_out(u, yt, states_u, j, ls, noise):
    """Reference, from the full per-observation system: state j's rows given all others (model units)."""
    rows = np.all(np.isclose(u, states_u[j]), axis=1)
    k = np_rbf(u, u, ls, 1.0) + noise**2 * np.eye(len(u))
    a, b = rows, ~rows
    kbb_inv = np.linalg.inv(k[np.ix_(b, b)])
    mu = k[np.ix_(a, b)] @ kbb_inv @ yt[b]
    cov = k[np.ix_(a, a)] - k[np.ix_(a, b)] @ kbb_inv @ k[np.ix_(b, a)]
    n = int(rows.sum())
    ybar, one = yt[rows].mean(), np.ones(n) / n
    var_mean = one @ cov @ one
    lp_mean = -0.5 * (np.log(2 * np.pi * var_mean) + (ybar - mu.mean()) ** 2 / var_mean)
    r = yt[rows] - mu
    _, logdet = np.linalg.slogdet(cov)
    lp_group = -0.5 * (n * np.log(2 * np.pi) + logdet + r @ np.linalg.solve(cov, r))
    return lp_mean, lp_group, n


def test_leave_one_state_out_matches_holding_out_every_copy():
    states, x, y = repeated_data()
    ls = np.array([0.3, 0.6])
    post = condition(x, y, ls)
    loso = leave_one_state_out(post.state)
    u, yt = model_units(post, x, y)
    states_u, _ = model_units(post, states, y[: len(states)])
    order = np.lexsort(states_u.T[::-1])  # np.unique's order of the unique inputs
    ref = [held_out(u, yt, states_u, j, ls, 0.2)[0] for j in order]
    log_scale = np.log(float(post.state.y_scale[0]))
    assert loso["states"] == len(COUNTS)
    np.testing.assert_allclose(loso["pointwise"], np.asarray(ref) - log_scale, atol=1e-8)
    assert loso["elpd"] == pytest.approx(float(np.sum(ref)) - len(COUNTS) * log_scale, abs=1e-7)
    assert "pareto_k_max" not in loso


def test_with_every_input_unique_it_is_leave_one_out():
    x = LOW + (HIGH - LOW) * RNG.random((15, 2))
    y = np.sin(x[:, 0]) + 0.1 * RNG.standard_normal(15)
    post = condition(x, y, np.array([0.4, 0.4]))
    loso = leave_one_state_out(post.state)
    assert loso["states"] == 15
    np.testing.assert_allclose(np.sort(loso["pointwise"]), np.sort(np.asarray(post.loo_log_density())[0]),
                               atol=1e-9)


def test_hyperparameter_draws_are_weighted_by_the_held_out_groups_density(monkeypatch):
    """Without smoothing the estimate is exact for a posterior that is these K draws, equally weighted."""
    monkeypatch.setattr(array_stats, "psislw", lambda ary, axis=-1: (ary, np.zeros(ary.shape[:-1])))
    states, x, y = repeated_data()
    post = condition(x, y, np.array([0.3, 0.6]))
    lss = np.array([[0.2, 0.5], [0.3, 0.6], [0.5, 0.9], [0.25, 1.5]])
    noises = np.array([0.1, 0.2, 0.35, 0.15])
    st = post.state
    theta = {k: jnp.repeat(v, len(lss), axis=0) for k, v in st.theta.items()}
    ls_site = next(k for k in theta if k.endswith("lengthscale"))
    theta[ls_site] = jnp.asarray(lss)[:, None, :]
    theta[st.program.noise.site] = jnp.asarray(noises)[:, None]
    loso = leave_one_state_out(st, theta)
    u, yt = model_units(post, x, y)
    states_u, _ = model_units(post, states, y[: len(states)])
    ref = []
    for j in np.lexsort(states_u.T[::-1]):
        parts = np.array([held_out(u, yt, states_u, j, ls, nz)[:2] for ls, nz in zip(lss, noises)])  # [K, 2]
        log_w = -parts[:, 1] - np.logaddexp.reduce(-parts[:, 1])
        ref.append(np.logaddexp.reduce(log_w + parts[:, 0]))
    np.testing.assert_allclose(loso["pointwise"], np.asarray(ref) - np.log(float(st.y_scale[0])), atol=1e-7)
    assert loso["pareto_k_max"] == 0.0


def test_white_noise_kernels_have_no_state_level_score():
    states, x, y = repeated_data()
    post = condition_gp(parse_kernel({"kind": "sum", "terms": [{"kind": "rbf"}, {"kind": "white"}]}), as_data(x, y),
                        noise=0.2, hyperparameters={"kernel/terms/0/lengthscale": np.array([0.3, 0.6]),
                                                    "kernel/terms/0/variance": 1.0, "kernel/terms/1/variance": 0.1},
                        feature_ranges=list(zip(LOW, HIGH)), standardize=True)
    assert leave_one_state_out(post.state) is None
    assert "elpd_loso" not in post.to_datatree().attrs


@pytest.mark.parametrize("noise", [0.2, 0.02])
def test_leave_one_out_of_repeated_inputs_computed_on_their_groups_is_per_observation_loo(noise):
    """loo_from_theta works on the unique inputs where inputs repeat; each row's LOO residual
    and variance are those of the full per-observation system (held out by brute force)."""
    from priorguard.models.gp.data import group_repeated_inputs
    from priorguard.models.gp.loo import loo_from_theta

    counts = [1, 7, 3, 12, 1, 9, 4, 6]
    states = LOW + (HIGH - LOW) * RNG.random((len(counts), 2))
    x = np.repeat(states, counts, axis=0)
    y = 40.0 + 8.0 * np.cos(x[:, 0]) + 0.5 * x[:, 1] + 0.3 * RNG.standard_normal(len(x))
    perm = RNG.permutation(len(x))
    x, y = x[perm], y[perm]
    ls = np.array([0.4, 0.7])
    st = condition(x, y, ls, noise=noise).state
    assert group_repeated_inputs(st.program, np.asarray(st.x), np.asarray(st.y)) is not None  # the grouped path
    resid, var = loo_from_theta(st.program, moments=True)(st.theta, st.x, st.y, st.y_scale)
    resid, var = np.asarray(resid)[0, 0], np.asarray(var)[0, 0]
    u, yt = model_units(condition(x, y, ls, noise=noise), x, y)
    k = np_rbf(u, u, ls, 1.0) + noise**2 * np.eye(len(u))
    for i in range(len(u)):
        b = np.arange(len(u)) != i
        w = np.linalg.solve(k[np.ix_(b, b)], k[b, i])
        mu, v = w @ yt[b], k[i, i] - k[i, b] @ w
        np.testing.assert_allclose([resid[i], var[i]], [yt[i] - mu, v], rtol=1e-7, atol=1e-10)
    dens = np.asarray(loo_from_theta(st.program, per_output=True)(st.theta, st.x, st.y, st.y_scale))
    assert dens.shape == (1, len(u), 1) and np.all(np.isfinite(dens))
