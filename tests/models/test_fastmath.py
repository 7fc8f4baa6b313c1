"""The vectorisable float64 cosine used by random features: accuracy, gradient, edge values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.models.gp import features


@pytest.mark.parametrize("magnitude", [1.0, 50.0, 1e4, 1e6, 1e9, 1e12])
def test_cos_matches_libm_to_the_last_place(magnitude):
    x = np.random.default_rng(int(np.log10(magnitude))).uniform(-magnitude, magnitude, 100_000)
    x[:4] = [0.0, np.pi / 4, -np.pi / 4, magnitude]  # the reduction's edges too
    got = np.asarray(jax.jit(features.cos)(jnp.asarray(x)))
    assert np.max(np.abs(got - np.cos(x))) <= 2.5e-16


def test_cos_near_multiples_of_half_pi():
    # where cos is tiny the reduction's rounding shows most: compare to an absolute 1 ulp of 1
    k = np.arange(-2000, 2001, dtype=np.float64)
    x = np.concatenate([k * np.pi / 2, np.nextafter(k * np.pi / 2, np.inf), np.nextafter(k * np.pi / 2, -np.inf)])
    assert np.max(np.abs(np.asarray(features.cos(jnp.asarray(x))) - np.cos(x))) <= 2.5e-16


def test_cos_gradient_is_minus_sin():
    x = jnp.asarray(np.random.default_rng(3).uniform(-100.0, 100.0, 1000))
    grad = jax.vmap(jax.grad(features.cos))(x)
    np.testing.assert_allclose(np.asarray(grad), -np.sin(np.asarray(x)), rtol=0, atol=3e-16)


def test_cos_special_values_and_other_dtypes():
    out = np.asarray(features.cos(jnp.asarray([np.nan, np.inf, -np.inf, -0.0])))
    assert np.isnan(out[:3]).all() and out[3] == 1.0
    x32 = jnp.linspace(-10.0, 10.0, 101, dtype=jnp.float32)
    assert features.cos(x32).dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(features.cos(x32)), np.asarray(jnp.cos(x32)))


def test_docstring_example_runs():
    import doctest

    assert doctest.testmod(features).failed == 0
