"""Kernels that are even in some features: an invariance declared in the prior."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.models.base import as_data
from priorguard.models.gp import condition_gp, fit_exact_gp
from priorguard.priors.distributions import Prior
from priorguard.priors.errors import SpecError
from priorguard.priors.kernels import parse_kernel

from tests.models.test_gp_draws import _check_moments

RANGES = [(-9.0, 9.0), (0.0, 1.0)]  # a signed offset and an unsigned feature, scaled to [0, 1]


def _step_data():
    """T's coin-shift data: 1 at offset 0, 0 at offsets 1..9 (one side only)."""
    dx = np.arange(0.0, 10.0)
    x = np.stack([dx, np.zeros_like(dx)], 1)
    return x, (dx == 0).astype(float)


def test_even_posterior_mirrors_the_data_to_the_side_it_never_saw():
    x, y = _step_data()
    kernel = {"kind": "rbf", "lengthscale": 0.05, "variance": 1.0, "active_dims": [0], "even": [0]}
    even = condition_gp(parse_kernel(kernel), as_data(x, y), noise=0.05, feature_ranges=RANGES)
    plain = condition_gp(parse_kernel({k: v for k, v in kernel.items() if k != "even"}), as_data(x, y),
                         noise=0.05, feature_ranges=RANGES)
    xq = np.stack([np.arange(-9.0, 10.0), np.zeros(19)], 1)
    mirror = xq * np.asarray([-1.0, 1.0])
    pe, pm = even.predict(jnp.asarray(xq)), even.predict(jnp.asarray(mirror))
    np.testing.assert_allclose(pe.mean, pm.mean, atol=1e-9)
    np.testing.assert_allclose(pe.epistemic_var, pm.epistemic_var, atol=1e-9)
    # the unseen side is as certain as the seen one, and ranks "on the coin" first
    mean = np.asarray(pe.mean[:, 0])
    assert int(np.argmax(mean)) == 9  # offset 0
    assert float(mean[8]) < 0.2 and float(mean[10]) < 0.2  # offsets -1 and +1
    # without the invariance the side it never saw is uncertain
    sd_plain = np.sqrt(np.asarray(plain.predict(jnp.asarray(xq)).epistemic_var[:, 0]))
    sd_even = np.sqrt(np.asarray(pe.epistemic_var[:, 0]))
    assert sd_plain[:5].min() > 5 * sd_even[:5].max()


def test_even_gram_is_the_average_over_the_reflection():
    x, y = _step_data()
    post = condition_gp(parse_kernel({"kind": "matern52", "lengthscale": 0.2, "variance": 1.3, "even": [0]}),
                        as_data(x, y), noise=0.1, feature_ranges=RANGES)
    base = condition_gp(parse_kernel({"kind": "matern52", "lengthscale": 0.2, "variance": 1.3}),
                        as_data(x, y), noise=0.1, feature_ranges=RANGES)
    st, sb = post.state, base.state
    theta = {k: v[0, 0] for k, v in st.theta.items()}
    rng = np.random.default_rng(3)
    a = jnp.asarray(st.model_inputs(jnp.asarray(rng.uniform(-9, 9, (7, 2)))))
    b = jnp.asarray(st.model_inputs(jnp.asarray(rng.uniform(-9, 9, (5, 2)))))
    reflect = lambda u: u.at[:, 0].set(1.0 - u[:, 0])  # offset -> -offset is u -> 1 - u on (-9, 9)
    k = lambda p, q: sb.program.kernel.gram(theta, p, q, same=False)
    expected = 0.25 * (k(a, b) + k(a, reflect(b)) + k(reflect(a), b) + k(reflect(a), reflect(b)))
    np.testing.assert_allclose(st.program.kernel.gram(theta, a, b, same=False), expected, rtol=1e-12)
    np.testing.assert_allclose(st.program.kernel.gram_diag(theta, a, white=False),
                               np.diag(st.program.kernel.gram(theta, a, a, same=True)), rtol=1e-12)
    assert st.program.describe() == "matern52[even]"
    # an empty list declares no invariance (as when left out)
    assert parse_kernel({"kind": "rbf", "even": []}).even == []


@pytest.mark.parametrize("spec", [
    {"kind": "rbf", "lengthscale": 0.2, "variance": 1.0, "even": [0]},
    {"kind": "sum", "terms": [{"kind": "linear", "variance": 0.5, "even": [0]},
                              {"kind": "matern32", "lengthscale": 0.3, "variance": 0.7, "even": [0]}]},
], ids=["rbf", "linear+matern32"])
def test_even_draws_reproduce_the_posterior_and_are_even(spec):
    x, y = _step_data()
    post = condition_gp(parse_kernel(spec), as_data(x[:, :1], y), noise=0.1, feature_ranges=RANGES[:1])
    xs = np.asarray([[-7.0], [-2.0], [0.5], [3.0], [8.0]])
    draws = _check_moments(post, xs, 4000, jax.random.key(5))
    np.testing.assert_allclose(draws(jnp.asarray(xs)), draws(jnp.asarray(-xs)), atol=1e-9)


def test_fitted_even_gp_learns_its_hyperparameters():
    x, y = _step_data()
    kernel = {"kind": "rbf", "even": ["dx"], "lengthscale": {"dist": "LogNormal", "loc": 0.0, "scale": 1.0}}
    post = fit_exact_gp(parse_kernel(kernel), as_data(x[:, :1], y), key=jax.random.key(0),
                        noise=Prior(dist="HalfNormal", params={"scale": 0.1}),
                        feature_names=["dx"], feature_ranges={"dx": (-9.0, 9.0)})
    mean = np.asarray(post.predict(jnp.asarray([[-3.0], [0.0], [3.0]])).mean[:, 0])
    assert abs(mean[0] - mean[2]) < 1e-9 and mean[1] > 0.5 > max(mean[0], mean[2])


@pytest.mark.parametrize("spec, needle", [
    ({"kind": "white", "even": [0]}, "white kernel is noise"),
    ({"kind": "rbf", "even": ["a", "a"]}, "duplicates"),
])
def test_even_rejects_bad_input(spec, needle):
    with pytest.raises((SpecError, ValueError)) as err:
        parse_kernel(spec)
    assert needle in str(err.value)


def test_even_in_a_feature_the_kernel_does_not_see_is_an_error():
    x, y = _step_data()
    with pytest.raises(ValueError, match="does not see"):
        condition_gp(parse_kernel({"kind": "rbf", "lengthscale": 0.2, "variance": 1.0, "active_dims": [1],
                                   "even": [0]}), as_data(x, y), noise=0.1, feature_ranges=RANGES)
