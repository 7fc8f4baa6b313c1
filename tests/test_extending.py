"""Extending priorguard from outside the package: an environment, a veto rule and a planner kind,
each registered from this file (docs/extending.md lists the files a change inside the package touches).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.envs import OutcomeFlag, PriorguardEnv, env_info, list_envs, register_env
from priorguard.envs.coin_shift import CoinShiftDynamics, coin_shift_policies
from priorguard.experiments import ExperimentSpec
from priorguard.experiments.drivers import OneStepDriver, driver_for, planner_kinds, register_planner
from priorguard.experiments.evaluate import evaluate
from priorguard.experiments.scoring import outcome_scores
from priorguard.metrics import metric, table_metrics
from priorguard.planners import VetoRule, register_veto_rule, veto_rule_names
from priorguard.planners.veto import make_veto_rule


# --- an environment with an outcome of its own --------------------------------------------


@dataclasses.dataclass(frozen=True)
class CornerCoinDynamics(CoinShiftDynamics):
    """CoinShift, reporting whether the agent stands in the leftmost cell (an outcome flag)."""

    env_id: ClassVar[str] = "tests/CornerCoin-v0"
    outcome_flags: ClassVar[tuple[OutcomeFlag, ...]] = (OutcomeFlag("in_corner", "corner_rate", "in the corner"),)

    def outcomes(self, xp: Any, state: Any) -> dict[str, Any]:
        return {"in_corner": state[0] == 0}


class CornerCoinEnv(PriorguardEnv):
    def __init__(self, split: str = "train", *, render_mode: str | None = None):
        super().__init__(CornerCoinDynamics(split=split), render_mode)


register_env(CornerCoinDynamics, "test_extending:CornerCoinEnv", coin_shift_policies)


def always(action: int):
    def act(_key, obs):
        actions = np.full(len(obs), action)
        return actions, actions[:, None], np.zeros((len(obs), 1), bool), np.zeros(len(obs), bool)

    act.is_numpy = True
    return act


def test_a_registered_environment_runs_with_its_outcome_scored_and_shown():
    assert "tests/CornerCoin-v0" in list_envs()
    assert env_info("tests/CornerCoin-v0").outcome_flags[0].metric == "corner_rate"
    left, right = (evaluate("tests/CornerCoin-v0", "deploy", 4, jax.random.key(0), always(a)) for a in (0, 2))
    assert left["in_corner"].all() and not right["in_corner"].any()  # 30 steps left end in the corner
    flags = env_info("tests/CornerCoin-v0").outcome_flags
    assert outcome_scores(flags, {"": left, "no_veto_": right}) == {"corner_rate": 1.0, "no_veto_corner_rate": 0.0}
    assert metric("corner_rate").label == "in the corner" and metric("corner_rate").unit
    shown = [m.name for m in table_metrics("cli", [{"corner_rate": 1.0}])]
    assert "corner_rate" in shown and "corner_rate" not in [m.name for m in table_metrics("cli", [{}])]
    spec = ExperimentSpec.model_validate({"name": "corner", "env": "tests/CornerCoin-v0",
                                          "terminal": {"model": "gp", "features": ["coin_dx"]},
                                          "world": {"model": "bnn"}})
    assert spec.env == "tests/CornerCoin-v0"


def test_an_environment_id_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="already registered"):
        register_env(type("Other", (CornerCoinDynamics,), {}), "test_extending:CornerCoinEnv", coin_shift_policies)


# --- a veto rule ------------------------------------------------------------------------------


class VetoAction(VetoRule):
    """Vetoes one action index, whatever the models say."""

    action: int

    def veto(self, stats: Any) -> Any:
        return jnp.broadcast_to(jnp.arange(stats.mean.shape[-1]) == self.action, stats.mean.shape)

    def disarmed(self) -> VetoRule:
        return VetoAction(action=-1)


register_veto_rule("tests_veto_action", lambda action: VetoAction(action=action))


def test_a_registered_veto_rule_is_named_in_a_spec_and_chained_by_the_run():
    assert "tests_veto_action" in veto_rule_names()
    spec = ExperimentSpec.model_validate({
        "name": "rule", "env": "priorguard/CoinShift-v1", "terminal": {"model": "gp"}, "world": {"model": "bnn"},
        "planner": {"veto": {"epistemic_std": None, "rules": [{"name": "tests_veto_action",
                                                                "params": {"action": 2}}]}}})
    v = spec.planner.veto
    rule, _ = make_veto_rule(epistemic_std=v.epistemic_std, rules=[(r.name, r.params) for r in v.rules])
    from priorguard.planners.base import ActionStats

    stats = ActionStats.from_world_values(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4)))
    assert np.asarray(rule.veto(stats)).tolist() == [[False, False, True]] * 2
    with pytest.raises(Exception, match="no veto rule 'tests_veto_actoin'.*did you mean 'tests_veto_action'"):
        ExperimentSpec.model_validate({
            "name": "rule", "env": "priorguard/CoinShift-v1", "terminal": {"model": "gp"}, "world": {"model": "bnn"},
            "planner": {"veto": {"rules": [{"name": "tests_veto_actoin"}]}}})


# --- a planner kind -------------------------------------------------------------------------


@register_planner
class GreedyDriver(OneStepDriver):
    """A one-step planner for discrete actions only, under a name of its own."""

    kind = "tests_greedy"
    action_kinds = ("discrete",)


def test_a_registered_planner_kind_is_named_in_a_spec_and_driven():
    assert planner_kinds()["tests_greedy"] == ("discrete",)
    spec = ExperimentSpec.model_validate({"name": "greedy", "env": "priorguard/CoinShift-v1",
                                          "terminal": {"model": "gp"}, "world": {"model": "bnn"},
                                          "planner": {"kind": "tests_greedy"}})
    assert isinstance(driver_for(spec.planner, env_info(spec.env), 0.9), GreedyDriver)
    with pytest.raises(Exception, match="tests_greedy plans discrete actions"):
        ExperimentSpec.model_validate({"name": "greedy", "env": "priorguard/ShiftedPendulum-v0",
                                       "terminal": {"model": "gp"}, "world": {"model": "bnn"},
                                       "planner": {"kind": "tests_greedy", "veto": {"fallback": [0.0]}}})


# --- a kernel kind --------------------------------------------------------------------------

from priorguard.models.gp import fit_gp, register_kernel_ops  # noqa: E402
from priorguard.models.gp.features import FEATURES, SPECTRAL_SCALE, RandomFeatures  # noqa: E402
from priorguard.models.gp.kernels import KIND_OPS, KindOps  # noqa: E402
from priorguard.models.gp.linalg import squared_distances  # noqa: E402
from priorguard.priors import GPModel, register_kernel  # noqa: E402


def laplacian_gram(leaf, th, a, b, same):
    """``variance * exp(-|a - b| / lengthscale)``: the exponential (Matern 1/2) kernel, written out."""
    ls = th["lengthscale"]
    r2 = squared_distances(a / ls, b / ls, same=same)
    return th["variance"] * jnp.exp(-jnp.sqrt(jnp.maximum(r2, 1e-36)))


def laplacian_features(leaf, th, keys, f):
    """Random Fourier features: Gaussian frequencies times a Student-t scale (nu = 1/2)."""
    k_w, k_b, k_s = keys
    omega = jax.random.normal(k_w, (f, len(leaf.dims))) * SPECTRAL_SCALE["matern12"](th, k_s, f) / th["lengthscale"]
    return {"omega": omega, "phase": jax.random.uniform(k_b, (f,), maxval=2 * jnp.pi)}


# the exponential kernel under a name of its own: a GP with it must be the matern12 GP
register_kernel("tests_laplacian", params={"lengthscale": "positive", "variance": "positive"}, flops=(3, 4))
register_kernel_ops("tests_laplacian", KindOps(laplacian_gram, KIND_OPS["matern12"].diag),
                    RandomFeatures(laplacian_features, FEATURES["matern12"].evaluate))


def test_a_registered_kernel_kind_is_named_in_a_spec_and_fitted():
    from priorguard.models import as_data

    x = np.linspace(0.0, 1.0, 12)[:, None]
    data = as_data(x, np.sin(6 * x[:, 0]))
    fits = {}
    for kind in ("tests_laplacian", "matern12"):
        spec = GPModel.model_validate({"model": "gp", "kernel": {"kind": kind, "variance": 1.5,
                                                                  "lengthscale": {"dist": "LogNormal", "loc": 0.0,
                                                                                  "scale": 1.0}}})
        fits[kind] = fit_gp(spec, data, key=jax.random.key(0), feature_names=["x"])
    probe = jnp.linspace(-0.5, 1.5, 7)[:, None]
    a, b = (fits[k].predict(probe) for k in ("tests_laplacian", "matern12"))
    np.testing.assert_allclose(np.asarray(a.mean), np.asarray(b.mean), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(a.epistemic_var), np.asarray(b.epistemic_var), rtol=1e-6, atol=1e-9)
    f = fits["tests_laplacian"].sample_functions(jax.random.key(1), 3)(probe)  # pathwise draws need its features
    assert np.all(np.isfinite(np.asarray(f)))
    # its table is checked against the declared hyperparameters and supports
    with pytest.raises(Exception, match="lengthscal"):
        GPModel.model_validate({"model": "gp", "kernel": {"kind": "tests_laplacian", "lengthscal": 1.0}})
    with pytest.raises(Exception, match="variance"):
        GPModel.model_validate({"model": "gp", "kernel": {"kind": "tests_laplacian", "variance": -1.0}})
    with pytest.raises(ValueError, match="already registered"):
        register_kernel("tests_laplacian", params={"variance": "positive"})
