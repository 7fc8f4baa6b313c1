"""The shared ArviZ builders of models/datatree.py."""

import doctest

import numpy as np

import priorguard.models.datatree as datatree


def test_nuts_sample_stats_uses_arviz_names():
    stats = {"diverging": np.array([[0, 1, 0]]), "num_steps": np.array([[0, 3, 8]]),
             "potential_energy": np.array([[1.0, 2.0, 3.0]]), "accept_prob": np.array([[0.5, 0.9, 1.0]]),
             "energy": np.array([[4.0, 5.0, 6.0]]), "step_size": np.array([0.1])}
    out = datatree.nuts_sample_stats(stats)
    assert list(out) == ["diverging", "n_steps", "tree_depth", "energy", "lp", "acceptance_rate", "step_size"]
    np.testing.assert_array_equal(out["tree_depth"], [[0, 2, 4]])
    np.testing.assert_array_equal(out["lp"], [[-1.0, -2.0, -3.0]])
    np.testing.assert_array_equal(out["step_size"], [[0.1, 0.1, 0.1]])
    assert out["diverging"].dtype == bool
    ds = datatree.sample_stats_dataset(out)
    assert dict(ds.sizes) == {"chain": 1, "draw": 3}


def test_groups_name_every_dimension():
    groups = datatree.observation_groups("terminal/t", np.zeros((4, 2)), np.ones((4, 1)), np.zeros((1, 3, 4)),
                                         np.zeros((2, 5, 4, 1)), output_coord=["value"], input_dim="feature",
                                         input_coord=["a", "b"])
    assert groups["constant_data"]["terminal.t.x"].dims == ("obs", "feature")
    assert list(groups["constant_data"]["feature"].values) == ["a", "b"]
    assert groups["log_likelihood"]["terminal.t.y"].dims == ("chain", "draw", "obs")
    assert dict(groups["posterior_predictive"].sizes) == {"chain": 2, "draw": 5, "obs": 4, "output": 1}
    post = datatree.posterior_dataset({}, {}, {"output": ["value"]})
    assert "chain" not in post.coords and list(post["output"].values) == ["value"]


def test_docstring_examples_run():
    result = doctest.testmod(datatree, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0
