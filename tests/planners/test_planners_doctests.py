"""Every docstring example in the planners package runs (float64 is on, see tests/conftest.py)."""

import doctest
import importlib

import pytest

MODULES = [
    "base", "worlds", "veto", "conformal", "proposals", "one_step", "mcts", "cem", "policies", "audit",
    "adversarial",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"priorguard.planners.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_namespace_is_curated():
    import priorguard.planners as planners

    assert sorted(planners.__all__) == sorted(set(planners.__all__))
    for name in planners.__all__:
        assert getattr(planners, name) is not None
