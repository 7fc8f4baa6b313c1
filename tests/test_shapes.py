"""Shape buckets (priorguard._compile): few distinct sizes, each close to the size asked for."""

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from priorguard import _compile
from priorguard._compile import shape_bucket


@given(n=st.integers(1, 10**7), per_octave=st.sampled_from([1, 2, 4, 8, 16]))
def test_buckets_bound_the_size_within_one_bucket(n, per_octave):
    up = shape_bucket(n, direction="up", per_octave=per_octave, exact_below=0)
    down = shape_bucket(n, direction="down", per_octave=per_octave, exact_below=0)
    assert down <= n <= up
    assert up - n < up / per_octave and n - down < n / per_octave
    # a bucket is its own bucket
    assert shape_bucket(up, direction="up", per_octave=per_octave, exact_below=0) == up
    assert shape_bucket(down, direction="down", per_octave=per_octave, exact_below=0) == down


@pytest.mark.parametrize("per_octave", [2, 8])
def test_one_octave_has_per_octave_buckets(per_octave):
    sizes = {shape_bucket(n, direction="up", per_octave=per_octave, exact_below=0) for n in range(1025, 2049)}
    assert len(sizes) == per_octave


def test_small_sizes_are_exact():
    assert [shape_bucket(n, direction="up") for n in (0, 1, 37, 64)] == [0, 1, 37, 64]


def test_per_octave_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        shape_bucket(100, direction="up", per_octave=3)


def test_docstring_examples_run():
    assert doctest.testmod(_compile).failed == 0
