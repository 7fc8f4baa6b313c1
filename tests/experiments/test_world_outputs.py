"""W predicts the observation columns some model reads; the others keep their value in imagination."""

import jax.numpy as jnp
import numpy as np
import pytest

from priorguard.envs import env_info
from priorguard.experiments.assemble import OutputScatter
from priorguard.models.base import FunctionDraws
from priorguard.experiments.context import world_outputs
from priorguard.planners import PlanningModels
from priorguard.experiments import ExperimentSpec

PENDULUM = "priorguard/ShiftedPendulum-v0"


def _spec(proposal="uniform", **roles):
    body = {"name": "w", "env": PENDULUM, "terminal": {"model": "gp", "features": ["cos_theta", "sin_theta"]},
            "world": {"model": "gp", "features": ["cos_theta", "sin_theta", "theta_dot"]},
            "planner": {"kind": "cem", "proposal": {"kind": proposal}, "veto": {"fallback": [0.0]}}, **roles}
    return ExperimentSpec.model_validate(body)


def test_world_outputs_are_the_columns_that_t_w_i_and_d_read():
    features = list(env_info(PENDULUM).feature_names)  # cos, sin, theta_dot, theta, forbidden_center, dtheta
    assert world_outputs(_spec(), features) == (0, 1, 2)
    with_i = _spec(instrumental={"model": "gp", "features": ["forbidden_dtheta"]})
    assert world_outputs(with_i, features) == (0, 1, 2, 5)
    with_d = _spec(termination={"model": "gp", "features": ["theta"]})
    assert world_outputs(with_d, features) == (0, 1, 2, 3)


@pytest.mark.parametrize("kind", ["behaviour", "learned"])
def test_a_proposal_fitted_to_states_reads_every_column(kind):
    features = list(env_info(PENDULUM).feature_names)
    assert world_outputs(_spec(proposal=kind), features) == tuple(range(len(features)))


def test_unpredicted_columns_keep_their_value_in_imagined_transitions():
    # two worlds; W's inner draw predicts a change of columns 0 and 2 of a 4-column observation
    inner = FunctionDraws({"d": jnp.asarray([[1.0, 10.0], [2.0, 20.0]])},
                          lambda p, x: jnp.broadcast_to(p["d"], x.shape[:-1] + (2,)))
    world = FunctionDraws(inner.params, OutputScatter(inner.apply_fn, (0, 2), 4))
    terminal = FunctionDraws({"w": jnp.zeros((2, 1))}, lambda p, x: x[:, :1] * p["w"])
    models = PlanningModels(world=world, terminal=terminal, terminal_columns=(0,),
                            action_low=-jnp.ones(1), action_high=jnp.ones(1))
    obs = jnp.asarray([[0.5, 7.0, -1.0, 3.0]])
    nxt = np.asarray(models.next_state_all_worlds(obs, jnp.zeros((1, 1))))
    np.testing.assert_allclose(nxt[:, 0], [[1.5, 7.0, 9.0, 3.0], [2.5, 7.0, 19.0, 3.0]])
    assert OutputScatter(inner.apply_fn, (0, 2), 4) == OutputScatter(inner.apply_fn, (0, 2), 4)
    assert OutputScatter(inner.apply_fn, (0, 2), 4) != OutputScatter(inner.apply_fn, (0, 1), 4)


def test_a_gp_world_model_names_its_outputs_in_the_datatree():
    import jax

    from priorguard.models.base import as_data
    from priorguard.models.roles import fit_role
    from priorguard.priors.models import GPModel

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (30, 2))
    y = np.stack([x[:, 0] * 0.1, -x[:, 1] * 0.2], axis=1)
    post = fit_role(GPModel(model="gp", inference={"method": "map", "steps": 20}), as_data(x, y),
                    key=jax.random.key(0), role="world", feature_names=["a", "action_0"],
                    output_names=["delta_cos_theta", "delta_theta_dot"])
    tree = post.to_datatree()
    assert list(tree["posterior"].ds["output"].values) == ["delta_cos_theta", "delta_theta_dot"]


def test_a_bnn_world_models_datatree_names_its_inputs_and_outputs():
    import jax

    from priorguard.models.base import as_data
    from priorguard.models.bnn import fit_bnn
    from priorguard.models.roles import fit_role
    from priorguard.priors.models import BNNModel

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (30, 2))
    y = np.stack([x[:, 0] * 0.1, -x[:, 1] * 0.2], axis=1)
    spec = BNNModel(model="bnn", hidden=[4], inference={"method": "map", "steps": 20})
    post = fit_role(spec, as_data(x, y), key=jax.random.key(0), role="world", feature_names=["a", "action_0"],
                    output_names=["delta_cos_theta", "delta_theta_dot"])
    tree = post.to_datatree()
    assert list(tree["posterior"].ds["output"].values) == ["delta_cos_theta", "delta_theta_dot"]
    assert list(tree["posterior"].ds["feature"].values) == ["a", "action_0"]
    assert tree["posterior"]["world.layer1.w"].dims[-1] == "output"
    with pytest.raises(ValueError, match="output_names has 1 names for 2 columns"):
        fit_bnn(spec, as_data(x, y), key=jax.random.key(0), output_names=["delta_a"])
