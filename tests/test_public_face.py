"""The curated face: every name ``priorguard.__all__`` lists resolves, and is the object its module defines."""

import importlib

import priorguard


def test_every_public_name_resolves_to_its_module_object():
    for name, module in priorguard._FACE.items():
        assert getattr(priorguard, name) is getattr(importlib.import_module(module), name), name
    assert set(priorguard._FACE) <= set(priorguard.__all__) and "__version__" in dir(priorguard)


def test_an_unknown_name_is_an_attribute_error():
    try:
        priorguard.fit_everything  # noqa: B018
    except AttributeError as err:
        assert "fit_everything" in str(err)
    else:
        raise AssertionError("no AttributeError")
