"""Uncertainty on fixed probe sets: the probe set itself, and the T models that pass it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.analysis.diagnostics import auroc
from priorguard.experiments.data import collect
from priorguard.models.base import as_data
from priorguard.models.roles import fit_role
from priorguard.priors.models import BNNModel

COIN = "priorguard/CoinShift-v1"


def _coin_t_data():
    """T's training data on CoinShift's train split: coin_dx (0 .. 9) -> on the coin or not."""
    ep = collect(COIN, "train", 40, "behaviour", jax.random.key(3))
    x = ep.next_obs[:, 2:3].astype(np.float64)  # coin_dx
    return x, ep.rater.astype(np.float64)


def _ood_auroc(post) -> float:
    novel = jnp.arange(-9.0, 0.0)[:, None]  # a coin to the agent's left: never in training
    seen = jnp.arange(0.0, 10.0)[:, None]
    std = [np.sqrt(np.asarray(post.predict(x).epistemic_var)).ravel() for x in (novel, seen)]
    return auroc(std[0], std[1])


def test_seen_states_stored_in_float32_are_not_probes(monkeypatch):
    """Training states come back from the environments in float32 and probes in float64: a seen
    state must still count as seen (its bytes differ across dtypes)."""
    from types import SimpleNamespace

    from priorguard.experiments import probes as P

    class Flat:  # epistemic std = |x|: the probes below are all more uncertain than the reference
        def predict(self, x):
            return SimpleNamespace(epistemic_var=jnp.abs(x) ** 2)

    spec = SimpleNamespace(terminal=SimpleNamespace(features=["a"]), instrumental=None)
    ctx = SimpleNamespace(spec=spec, features=["a"])
    monkeypatch.setattr(P, "role_inputs", lambda s, f: [0])
    train = np.asarray([[0.0], [1.0]], np.float32)
    cal = SimpleNamespace(next_obs=np.asarray([[0.5]], np.float32))
    out = P.ood_scores(ctx, {"terminal": Flat()}, train, cal, np.asarray([[0.0], [1.0], [3.0]], np.float64))
    assert out["terminal_ood_probes"] == 1  # only 3.0 is unseen
    assert out["terminal_ood_auroc"] == 1.0
    out = P.ood_scores(ctx, {"terminal": Flat()}, train, cal, np.asarray([[1.0]], np.float64))
    assert out["terminal_ood_auroc"] is None and "unseen" in out["terminal_ood_auroc_na"]


@pytest.mark.parametrize("inference, expect_high", [({"method": "ensemble"}, True),
                                                     ({"method": "svi"}, False)])
def test_bnn_t_uncertainty_off_the_data(inference, expect_high):
    """A BNN T with the default inference (a deep ensemble) is more uncertain at every coin_dx < 0
    than at any trained coin_dx; mean-field SVI, the old default, is not (its std barely grows
    off the data): the reason the default changed."""
    x, y = _coin_t_data()
    spec = BNNModel.model_validate({"model": "bnn", "features": ["coin_dx"], "inference": inference})
    if inference["method"] == "ensemble":
        assert BNNModel.model_validate({"model": "bnn"}).inference.method == "ensemble"  # the default
    post = fit_role(spec, as_data(x, y), key=jax.random.key(0), role="terminal", feature_names=["coin_dx"],
                    feature_ranges=[(-9.0, 9.0)])
    score = _ood_auroc(post)
    assert (score >= 0.9) if expect_high else (score < 0.9), score


def test_gp_t_uncertainty_off_the_data():
    from priorguard.priors.models import GPModel

    x, y = _coin_t_data()
    spec = GPModel.model_validate({"model": "gp", "features": ["coin_dx"], "mean": 0.0, "kernel": {"kind": "rbf"},
                                   "inference": {"method": "map"}})
    post = fit_role(spec, as_data(x, y), key=jax.random.key(0), role="terminal", feature_names=["coin_dx"],
                    feature_ranges=[(-9.0, 9.0)])
    assert _ood_auroc(post) >= 0.9
