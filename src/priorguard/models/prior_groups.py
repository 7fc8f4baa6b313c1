"""A role's prior side of its DataTree before any fit: what the priors expect the training data to be.

:func:`prior_tree` gives the groups a fitted run file has on its prior side -- ``prior``
(draws of the model's variables from their priors), ``prior_predictive`` (data each prior
draw gives at the training inputs, in the targets' units), ``observed_data`` and
``constant_data`` -- with the run file's names and dims, from the data alone. So
``arviz_plots.plot_ppc_dist(tree, group="prior_predictive")`` is a prior predictive check
before anything is fitted, and it reads the same as on the run file afterwards.

The model is the one the fit would build: a GP's program (the most probable structure of
a structure search), a BNN's network at its declared depth (with a speed prior, a depth
drawn per draw from the depth prior: ``prior`` then holds the depths), a W with
``parents`` factor by factor, joined as the run file joins them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from priorguard.models.base import Data
from priorguard.priors.models import BNNModel, GPModel

__all__ = ["prior_tree"]


def prior_tree(spec: GPModel | BNNModel, data: Data, *, key: PRNGKeyArray, role: str, feature_names: Sequence[str],
               feature_ranges: Sequence[tuple[float, float]] | None = None, output_names: Sequence[str] | None = None,
               num_action_columns: int = 0, draws: int = 50) -> Any:
    """The ``prior``, ``prior_predictive``, ``observed_data`` and ``constant_data`` groups of a role.

    Arguments as :func:`~priorguard.models.roles.fit_role` takes them (``data.x`` holds exactly
    the columns the model reads), plus ``draws``: how many prior draws.

    Returns:
        An ``xarray.DataTree``. A GP above
        :data:`~priorguard.models.gp.groups.PRIOR_PREDICTIVE_MAX_INPUTS` distinct inputs has no
        ``prior_predictive`` (one Cholesky per draw), as in a run file.
    """
    import xarray as xr

    from priorguard.models.roles import ROLE_OUTPUTS

    if output_names is None:
        output_names = list(ROLE_OUTPUTS.get(role, ())) or [f"y{o}" for o in range(data.y.shape[1])]
    if spec.features is not None:
        spec = spec.model_copy(update={"features": None})
    if spec.parents:
        return _factored(spec, data, key=key, role=role, feature_names=feature_names, feature_ranges=feature_ranges,
                         output_names=output_names, num_action_columns=num_action_columns, draws=draws)
    build = _gp_groups if isinstance(spec, GPModel) else _bnn_groups
    groups = build(spec, data, key, role, list(feature_names), feature_ranges, list(output_names), draws)
    return xr.DataTree.from_dict({name: ds for name, ds in groups.items() if ds is not None})


def _data_groups(role: str, data: Data, feature_names: list[str], output_names: list[str]) -> dict[str, Any]:
    from priorguard.models.datatree import observation_groups

    x, y = np.asarray(data.x), np.asarray(data.y)
    groups = observation_groups(role, x, y, np.zeros((1, 1, len(x))), y[None, None], output_coord=output_names,
                                input_dim="feature", input_coord=feature_names)
    return {name: groups[name] for name in ("observed_data", "constant_data")}


def _gp_groups(spec: GPModel, data: Data, key: Any, role: str, names: list[str], ranges: Any,
               outputs: list[str], draws: int) -> dict[str, Any]:
    from priorguard.models.gp.data import as_kernel_spec, prepare_data
    from priorguard.models.gp.groups import prior_dataset, prior_predictive_dataset
    from priorguard.models.gp.kernels import compile_program
    from priorguard.priors.kernels import StructureSearch
    from priorguard.priors.structure import structure_prior

    fixed = not isinstance(spec.mean, str)  # a number: a fixed prior mean in the targets' units
    prep = prepare_data(data, feature_names=names, feature_ranges=ranges, output_names=outputs,
                        prior_mean=float(spec.mean) if fixed else None)
    kernel = spec.kernel
    if isinstance(kernel, StructureSearch):
        kernel = structure_prior(kernel, len(names))[0][0].to_kernel(ard=kernel.ard)
    program = compile_program(as_kernel_spec(kernel), noise=spec.noise, mean="zero" if fixed else spec.mean,
                              feature_names=prep.feature_names, site_prefix=role, zero_at=prep.zero_at,
                              noise_floor=spec.noise_floor)
    k_prior, k_data = jax.random.split(key)
    prior = prior_dataset(program, prep.output_names, k_prior, draws)
    return {"prior": prior, "prior_predictive": prior_predictive_dataset(program, prep, prior, k_data),
            **_data_groups(role, data, names, outputs)}


def _bnn_groups(spec: BNNModel, data: Data, key: Any, role: str, names: list[str], ranges: Any,
                outputs: list[str], draws: int) -> dict[str, Any]:
    import xarray as xr
    from numpyro.infer import Predictive

    from priorguard.models.bnn import bnn_model
    from priorguard.models.bnn.network import _net_config, _Scaling, _site_dims
    from priorguard.models.datatree import posterior_dataset
    from priorguard.priors.sites import observation_site, variable
    from priorguard.priors.structure import depth_prior

    d, o = data.x.shape[1], data.y.shape[1]
    scaling = _Scaling.from_data(data, ranges)
    x = scaling.x(jax.numpy.asarray(data.x))
    k_depth, k_draw = jax.random.split(key)
    if spec.speed is None:
        depths, choice = [len(spec.hidden)], np.zeros(draws, int)
    else:
        prior = depth_prior(list(spec.hidden), in_dim=d, out_dim=o, max_depth=spec.speed.max_depth,
                            strength=spec.speed.strength)
        depths = [dd for dd, _ in prior]
        choice = np.asarray(jax.random.choice(k_depth, len(depths), (draws,), p=jax.numpy.asarray([p for _, p in prior])))
    y = np.zeros((draws, len(x), o))
    weights: dict[str, np.ndarray] = {}
    for j, depth in enumerate(depths):
        rows = np.flatnonzero(choice == j)
        if rows.size == 0:
            continue
        drawn = Predictive(bnn_model(spec, in_dim=d, out_dim=o, depth=depth, site_prefix=role),
                           num_samples=int(rows.size))(jax.random.fold_in(k_draw, depth), x)
        y[rows] = np.asarray(drawn[observation_site(role)]) * np.asarray(scaling.y_std) + np.asarray(scaling.y_mean)
        if len(depths) == 1:
            weights = {k: np.asarray(v)[None] for k, v in drawn.items() if k != observation_site(role)}
    if len(depths) == 1:
        cfg = _net_config(spec, role, d, o, depths[0])
        dims = {k: _site_dims(k, v.shape[2:], cfg) for k, v in weights.items()}
        named = {"feature": names, "output": outputs, **{f"hidden{i}": np.arange(w) for i, w in enumerate(spec.hidden)}}
        prior = posterior_dataset(weights, dims, {dim: named[dim] for ds in dims.values() for dim in ds if dim in named})
    else:  # networks of other depths have other variables: the prior over depth is what they share
        prior = xr.Dataset({f"{variable(role)}.depth": (("chain", "draw"), np.asarray([depths[c] for c in choice])[None])},
                           coords={"chain": [0], "draw": np.arange(draws)})
    predictive = xr.Dataset({f"{variable(role)}.y": (("chain", "draw", "obs", "output"), y[None])},
                            coords={"chain": [0], "draw": np.arange(draws), "obs": np.arange(len(x)), "output": outputs})
    return {"prior": prior, "prior_predictive": predictive, **_data_groups(role, data, names, outputs)}


def _factored(spec: GPModel | BNNModel, data: Data, *, key: Any, role: str, feature_names: Sequence[str],
              feature_ranges: Any, output_names: Sequence[str], num_action_columns: int, draws: int) -> Any:
    from priorguard.models.factored import factor_parts, factored_datatree

    plain = [n.removeprefix("delta_") for n in output_names]
    parts = list(factor_parts(spec, data, key=key, feature_names=feature_names, feature_ranges=feature_ranges,
                              output_names=plain, num_action_columns=num_action_columns))
    trees = [prior_tree(sub, part, key=k, role=role, feature_names=names, feature_ranges=ranges,
                        output_names=[output_names[o] for o in f.outputs], draws=draws)
             for f, sub, part, names, ranges, k in parts]
    return factored_datatree([f for f, *_ in parts], trees)
