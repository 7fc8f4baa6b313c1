"""Every docstring example in priorguard.envs runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import priorguard.envs

MODULES = sorted(
    name
    for _, name, _ in pkgutil.iter_modules(priorguard.envs.__path__, prefix="priorguard.envs.")
)


def test_the_package_has_the_documented_modules():
    assert {"priorguard.envs.coin_shift", "priorguard.envs.registry", "priorguard.envs.model"} <= set(MODULES)


@pytest.mark.parametrize("name", ["priorguard.envs", *MODULES])
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
