"""A GP's DataTree draws its posterior predictive with a key from the fit's key (not key(0))."""

import jax
import numpy as np

from priorguard.models import as_data
from priorguard.models.gp import fit_gp
from priorguard.models.gp.exact import PREDICTIVE_STREAM
from priorguard.priors import GPModel

SPECS = (GPModel(model="gp"), GPModel.model_validate({"model": "gp", "sparse": {"inducing": 8, "steps": 20}}))


def fit(key, spec):
    x = np.linspace(0.0, 1.0, 15)[:, None]
    return fit_gp(spec, as_data(x, np.sin(5 * x[:, 0])), key=key, feature_names=["x"])


def ppc(post):
    return np.asarray(post.to_datatree()["posterior_predictive"]["terminal.y"])


def test_the_posterior_predictive_follows_the_fits_key():
    for spec in SPECS:
        post = fit(jax.random.key(1), spec)
        expected = jax.random.key_data(jax.random.fold_in(jax.random.key(1), PREDICTIVE_STREAM))
        np.testing.assert_array_equal(jax.random.key_data(post.record.key), expected)
        a, again, b = ppc(post), ppc(fit(jax.random.key(1), spec)), ppc(fit(jax.random.key(2), spec))
        np.testing.assert_array_equal(a, again)  # same spec and key: the same numbers
        assert not np.allclose(a, b, atol=1e-3)  # another key: other replicates
        assert np.all(np.isfinite(a))
