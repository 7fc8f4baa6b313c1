"""Run-time checks: loud failures that leave compiled programs cacheable (priorguard._compile)."""

import doctest

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from priorguard import _compile
from priorguard._compile import CheckFailedError, checked_jit, fail_if


def _no_negatives(v):
    return fail_if(v * 2.0, v < 0, "negative input")


def test_passing_check_returns_the_value():
    out = checked_jit(_no_negatives)(jnp.arange(3.0))
    assert out.tolist() == [0.0, 2.0, 4.0]


def test_failed_check_raises_its_own_message():
    f = checked_jit(lambda v: fail_if(fail_if(v, v > 10, "too large"), v < 0, "negative input"))
    with pytest.raises(CheckFailedError, match="^negative input$"):
        f(jnp.asarray([1.0, -1.0]))
    with pytest.raises(CheckFailedError, match="^too large$"):
        f(jnp.asarray([11.0, 1.0]))


def test_top_level_checks_compile_without_a_host_callback():
    # a host callback keeps a program out of the persistent compilation cache
    x = jnp.ones(3)
    assert "callback" not in checked_jit(_no_negatives).lower(x).as_text()
    assert "callback" in eqx.filter_jit(_no_negatives).lower(x).as_text()


def test_checks_under_inner_transformations_still_fail():
    f = checked_jit(lambda v: jax.vmap(_no_negatives)(v))
    assert f(jnp.ones(2)).tolist() == [2.0, 2.0]
    with pytest.raises(Exception, match="negative input"):
        f(-jnp.ones(2))


def test_outside_checked_jit_it_is_error_if():
    with pytest.raises(Exception, match="negative input"):
        eqx.filter_jit(_no_negatives)(-jnp.ones(2))


def test_no_check_leaks_out_of_a_trace():
    checked_jit(_no_negatives)(jnp.ones(4))
    assert _compile._FRAME.get() is None


def test_docstring_examples_run():
    assert doctest.testmod(_compile, optionflags=doctest.ELLIPSIS).failed == 0
