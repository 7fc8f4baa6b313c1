"""Pathwise function draws: they reproduce the posterior's moments and are functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.models.base import FunctionDraws, as_data
from priorguard.models.gp import condition_gp
from priorguard.models.gp.draws import exact_draw_params
from priorguard.priors.kernels import parse_kernel

RNG = np.random.default_rng(7)


def _latent_covariance(post, xs):
    """Posterior latent covariance by the closed form, from the posterior's own factor (MAP/fixed)."""
    st = post.state

    theta = {k: v[0, 0] for k, v in st.theta.items()}
    u = st.model_inputs(jnp.asarray(xs))
    kxs = st.program.kernel.gram(theta, st.x, u, same=False)
    v = jax.scipy.linalg.solve_triangular(st.chol[0, 0], kxs, lower=True)
    cov = st.program.kernel.gram(theta, u, u, same=False) - v.T @ v
    return np.asarray(cov) * float(st.y_scale[0]) ** 2


def _check_moments(post, xs, n_draws, key):
    draws = post.sample_functions(key, n_draws, num_features=256)
    f = np.asarray(draws(jnp.asarray(xs)))[:, :, 0]  # [S, M]
    pred = post.predict(jnp.asarray(xs))
    mean, cov = np.asarray(pred.mean[:, 0]), _latent_covariance(post, xs)
    np.testing.assert_allclose(np.diag(cov), pred.epistemic_var[:, 0], rtol=1e-8, atol=1e-12)
    # mean: within 5 Monte-Carlo standard errors
    se_mean = f.std(0) / np.sqrt(n_draws)
    assert np.all(np.abs(f.mean(0) - mean) < 5 * se_mean + 1e-12), (f.mean(0) - mean) / se_mean
    # covariance: within 5 empirical standard errors of each entry
    c = f - f.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / np.sqrt(n_draws)
    z = (prods.mean(0) - cov) / (se_cov + 1e-15)
    assert np.max(np.abs(z)) < 5.0, np.max(np.abs(z))
    return draws


@pytest.mark.parametrize("spec", [
    {"kind": "rbf", "lengthscale": 0.2, "variance": 1.0},
    # every feature family at once: Matern Fourier features, the exact linear basis,
    # the periodic kernel's circle embedding, random Maclaurin features, a product
    {"kind": "sum", "terms": [
        {"kind": "matern32", "lengthscale": 0.3, "variance": 0.7},
        {"kind": "linear", "variance": 0.5},
        {"kind": "product", "terms": [
            {"kind": "periodic", "lengthscale": 0.6, "variance": 1.0, "period": 0.4},
            {"kind": "polynomial", "degree": 2, "variance": 0.8, "shift": 0.5}]}]},
], ids=["rbf", "matern32+linear+periodic*polynomial"])
def test_draws_reproduce_posterior_mean_and_covariance(spec):
    rng = np.random.default_rng(7)
    x = rng.random((15, 1))
    y = np.sin(7 * x[:, 0]) + 0.1 * rng.standard_normal(15)
    post = condition_gp(parse_kernel(spec), as_data(x, y), noise=0.1, feature_ranges=[(0.0, 1.0)])
    xs = np.linspace(-0.2, 1.2, 6)[:, None]  # inside and outside the data
    _check_moments(post, xs, 4000, jax.random.key(11))


def test_a_draw_is_a_function():
    x = RNG.random((12, 2))
    post = condition_gp(parse_kernel({"kind": "rbf", "lengthscale": 0.3, "variance": 1.0}),
                        as_data(x, np.stack([x[:, 0], -x[:, 1]], 1)), noise=0.1, feature_ranges=[(0, 1)] * 2)
    draws = post.sample_functions(jax.random.key(0), 5)
    assert isinstance(draws, FunctionDraws) and draws.num_draws == 5
    xq = jnp.asarray(RNG.random((4, 2)))
    a, b = draws(xq), draws(xq)
    assert a.shape == (5, 4, 2)
    np.testing.assert_array_equal(a, b)
    # evaluating one draw at a point does not depend on the other points
    np.testing.assert_allclose(draws.one(3, xq[1:2])[0], a[3, 1], atol=1e-12)
    # FunctionDraws is a pytree: it goes through jit as an argument, with a traced index
    one = jax.jit(lambda d, i, xx: d.one(i, xx))
    np.testing.assert_allclose(one(draws, jnp.int32(3), xq), a[3], atol=1e-12)
    per = draws.per_draw(jnp.broadcast_to(xq, (5, 4, 2)))
    np.testing.assert_allclose(per, a, atol=1e-12)
    # the same key gives the same worlds, another key other worlds
    again = post.sample_functions(jax.random.key(0), 5)(xq)
    np.testing.assert_array_equal(again, a)
    assert not np.allclose(post.sample_functions(jax.random.key(1), 5)(xq), a)
    # large N x features are drawn in padded chunks; the draws do not depend on the chunking
    chunked = exact_draw_params(post.state, jax.random.key(0), 5, 512, 2)
    unbatched = {k: v for k, v in draws.params.items() if k != "basis"}
    assert set(unbatched) == set(chunked)
    for u, v in zip(jax.tree_util.tree_leaves(unbatched), jax.tree_util.tree_leaves(chunked)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)



def test_repeated_inputs_collapse_to_the_same_draws(monkeypatch):
    """Thousands of visits to a few states: the GP is conditioned on the unique inputs (their average
    targets, noise / count) and the draw basis is those inputs; predictions and draws are those of
    the system over every row, whose update collapses to the unique rows afterwards."""
    from priorguard.models.gp import state as state_module
    from priorguard.models.gp.data import collapse_duplicate_inputs
    from priorguard.models.gp.draws import ExactDrawFn

    states = RNG.random((7, 2))
    x = states[RNG.integers(0, 7, 300)]
    y = np.sin(3 * x[:, 0]) + 0.05 * RNG.standard_normal(300)

    def fit():
        return condition_gp(parse_kernel({"kind": "matern52", "lengthscale": 0.4, "variance": 1.0}),
                            as_data(x, y), noise=0.1, feature_ranges=[(0, 1)] * 2)

    post = fit()
    assert post.state.grouped and post.state.chol.shape[-1] == 7  # the system over the 7 unique inputs
    draws = post.sample_functions(jax.random.key(3), 6)
    assert draws.params["basis"]["x_fit"].shape[1] == 7
    monkeypatch.setattr(state_module, "group_repeated_inputs", lambda *a, **k: None)
    rows = fit()  # K + noise^2 I over all 300 rows
    assert not rows.state.grouped and rows.state.chol.shape[-1] == 300
    xq = jnp.asarray(RNG.random((9, 2)))
    for a, b in zip(post.predict(xq), rows.predict(xq)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    row_draws = rows.sample_functions(jax.random.key(3), 6)
    assert row_draws.params["basis"]["x_fit"].shape[1] == 8  # 7 unique rows padded to the bucket 8
    np.testing.assert_allclose(draws(xq), row_draws(xq), rtol=1e-9, atol=1e-9)
    # the full update term k(x, X) v over every training row, recomputed without collapsing
    full = exact_draw_params(rows.state, jax.random.key(3), 6, 512, 6)
    distinct = np.unique(np.asarray(rows.state.x), axis=0)[:4]
    x_same, _ = collapse_duplicate_inputs(distinct, full["v"][..., :4])
    assert x_same is distinct  # nothing to collapse: returned as is
    st = rows.state
    full["basis"] = {k: jnp.broadcast_to(v, (6, *jnp.shape(v))) for k, v in
                     {"x_fit": st.x, "low": st.low, "scale": st.scale, "y_mean": st.y_mean,
                      "y_scale": st.y_scale}.items()}
    reference = FunctionDraws(full, ExactDrawFn(st.program, 512, st.columns))(xq)
    np.testing.assert_allclose(draws(xq), reference, rtol=1e-9, atol=1e-9)
    # the draw function is a value: equal for two fits of the same model
    assert draws.apply_fn == post.sample_functions(jax.random.key(4), 2).apply_fn


def test_draws_of_models_over_different_features_share_compiled_code():
    """Feature names do not enter a draw's apply function: a sweep over features reuses planners."""
    rng = np.random.default_rng(3)
    x = rng.random((20, 1))
    kernel = parse_kernel({"kind": "rbf", "lengthscale": 0.3, "variance": 1.0})
    fns = []
    for name in ("agent_x", "coin_dx"):
        post = condition_gp(kernel, as_data(x, np.sin(5 * x[:, 0])), noise=0.1, feature_names=[name],
                            feature_ranges=[(0.0, 1.0)])
        assert post.prep.feature_names == (name,)
        fns.append(post.sample_functions(jax.random.key(0), 2, num_features=16).apply_fn)
    assert fns[0] == fns[1] and hash(fns[0]) == hash(fns[1])


def test_many_draws_at_many_rows_are_evaluated_in_batches_with_the_same_values():
    """Above DRAW_BATCH_ROWS rows x draws, draws are mapped a batch at a time (bounded memory);
    16 draws in batches of 13: the last chunk is padded and cut off again."""
    import priorguard.models.base as base
    from priorguard.models.base import FunctionDraws

    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (16, 3, 2))}
    draws = FunctionDraws(params, lambda p, x: jnp.tanh(x @ p["w"]))
    x = jax.random.normal(jax.random.PRNGKey(1), (300, 3))
    xs = jax.random.normal(jax.random.PRNGKey(2), (16, 300, 3))
    assert base._draw_batch(16, 300) == base.DRAW_BATCH_ROWS // 300 == 13  # 16 x 300 > 4096: batched
    assert base._draw_batch(16, 8) is None  # a planner-sized call: one vmap
    chunks = base._chunks(params, 13)["w"]
    assert chunks.shape == (2, 13, 3, 2) and np.array_equal(chunks[1, 3:], np.broadcast_to(params["w"][0], (10, 3, 2)))
    np.testing.assert_allclose(draws(x), jax.vmap(draws.apply_fn, in_axes=(0, None))(params, x), rtol=1e-12)
    np.testing.assert_allclose(draws.per_draw(xs), jax.vmap(draws.apply_fn)(params, xs), rtol=1e-12)
