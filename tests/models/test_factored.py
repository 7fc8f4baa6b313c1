"""A W whose outputs read only their declared parents (models/factored.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.models.base import as_data
from priorguard.models.factored import FactoredPosterior, factor_groups, restrict_kernel
from priorguard.models.roles import fit_role
from priorguard.priors.kernels import parse_kernel
from priorguard.priors.models import GPModel

FEATURES = ["a", "b", "c"]
ACTIONS = ["go", "stay"]


def _data(n: int = 40, seed: int = 0):
    """Two outputs: out0 = go * a, out1 = go * b; a and b co-occur in training (a == b)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n).astype(float)
    c = rng.integers(0, 2, n).astype(float)
    go = rng.integers(0, 2, n).astype(float)
    x = np.stack([a, a, c, go, 1 - go], axis=1)
    y = np.stack([go * a, go * a], axis=1)
    return x, y


def _spec(parents=None):
    return GPModel(model="gp", kernel=parse_kernel({"kind": "product", "terms": [
        {"kind": "linear", "active_dims": FEATURES}, {"kind": "linear", "active_dims": ACTIONS}]}),
        noise=0.05, mean=0.0, parents=parents)  # a change of 0 where no kernel term reads the input


def _fit(parents):
    x, y = _data()
    return fit_role(_spec(parents), as_data(x, y), key=jax.random.PRNGKey(0), role="world",
                    feature_names=FEATURES + ACTIONS, feature_ranges=[(0.0, 1.0)] * 5,
                    output_names=["delta_a", "delta_b"], num_action_columns=2)


def test_groups_share_parents_and_always_read_the_action():
    groups = factor_groups({"a": ["a"], "c": []}, ["a", "b", "c"], FEATURES, 2)
    assert [(g.label, g.outputs, g.inputs) for g in groups] == [
        ("a", (0,), (0, 3, 4)), ("rest", (1,), (0, 1, 2, 3, 4)), ("c", (2,), (3, 4))]


def test_restrict_kernel_cuts_active_dims_and_drops_empty_terms():
    k = _spec().kernel
    cut = restrict_kernel(k, ["b", "go", "stay"], FEATURES + ACTIONS)
    assert [t.active_dims for t in cut.terms] == [["b"], ["go", "stay"]]
    only_action = restrict_kernel(k, ["go", "stay"], FEATURES + ACTIONS)
    assert only_action.kind == "linear" and only_action.active_dims == ["go", "stay"]
    assert restrict_kernel(parse_kernel({"kind": "linear", "active_dims": [0]}), ["b"], FEATURES) is None


def test_parents_decide_what_w_predicts_where_training_cannot_tell():
    """a and b always co-occur in training; out0 follows a. With a read by out0 alone, W
    predicts the new input (a=1, b=0) exactly and sure; reading both, it splits the credit."""
    x_new = jnp.asarray([[1.0, 0.0, 0.0, 1.0, 0.0]])
    full = _fit(None).predict(x_new)
    factored = _fit({"a": ["a"], "b": ["b"]})
    assert isinstance(factored, FactoredPosterior)
    pred = factored.predict(x_new)
    assert abs(float(pred.mean[0, 0]) - 1.0) < 0.05 and abs(float(pred.mean[0, 1])) < 0.05
    assert float(pred.epistemic_var[0, 0]) < 0.1 * float(full.epistemic_var[0, 0])
    assert abs(float(full.mean[0, 0]) - 0.5) < 0.2  # the shared W cannot tell a from b


def test_factored_draws_and_densities_keep_w_output_order():
    post = _fit({"b": ["b"]})  # factors: "rest" (a, reads all) then b: outputs concatenated b after a
    x = jnp.asarray(_data(8, seed=3)[0])
    draws = post.sample_functions(jax.random.PRNGKey(1), 64, num_features=256)
    mean_of_draws = np.asarray(draws(x)).mean(axis=0)
    np.testing.assert_allclose(mean_of_draws, np.asarray(post.predict(x).mean), atol=0.15)
    assert np.asarray(draws.one(0, x)).shape == (8, 2)
    y = jnp.asarray(_data(8, seed=3)[1])
    parts = [p.log_predictive_density(x[:, jnp.asarray(f.inputs)], y[:, jnp.asarray(f.outputs)])
             for f, p in zip(post.factors, post.posteriors)]
    np.testing.assert_allclose(post.log_predictive_density(x, y), parts[0] + parts[1])


def test_factored_datatree_lists_each_factor():
    dt = _fit({"a": ["a"], "b": ["b"]}).to_datatree()
    post = dt["posterior"].to_dataset()
    assert list(post["output"].values) == ["delta_a", "delta_b"]
    assert np.isfinite(post["world.kernel.terms.0.variance"].values).all()
    # the factors share W's rows: their data read as one model's, W's outputs in W's order
    observed = dt["observed_data"]["world.y"]
    assert list(observed["output"].values) == ["delta_a", "delta_b"]
    np.testing.assert_array_equal(observed.values, _data()[1])
    assert dt["log_likelihood"]["world.y"].dims == ("chain", "draw", "obs", "output")
    assert list(dt["constant_data"]["world.x"]["feature"].values) == ["a", "b", "go", "stay"]  # c: no factor reads it
    assert "elpd_loo_exact" in dt.attrs and "factors" in dt.attrs


@pytest.mark.parametrize(("parents", "field", "words"), [
    ({"nope": ["a"]}, "world.parents.nope", "not one of W's outputs"),
    ({"act_pay": ["req_nope"]}, "world.parents.act_pay[0]", "not among W's features"),
])
def test_bad_parents_name_their_field(parents, field, words):
    from priorguard.experiments.catalog import load_spec
    from priorguard.experiments.spec import ExperimentSpec
    from priorguard.priors import SpecError

    data = load_spec("assistant").model_dump(mode="json", exclude_none=True)
    data["world"]["parents"] = parents
    with pytest.raises(SpecError) as err:
        ExperimentSpec.from_dict(data)
    assert field in str(err.value) and words in str(err.value)


def test_parents_only_on_w():
    from priorguard.experiments.catalog import load_spec
    from priorguard.priors import SpecError

    with pytest.raises(SpecError) as err:
        load_spec("assistant").with_overrides({"terminal.parents": {"out_harm": []}})
    assert "terminal.parents" in str(err.value) and "only W" in str(err.value)
