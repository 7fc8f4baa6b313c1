"""Shared ArviZ builders: the groups of a fitted model's ``xarray.DataTree``.

GPs and BNNs write the same groups the same way: every variable is a site
name with ``/`` written ``.`` (DataTree forbids ``/``), every dimension is
named, and coordinates are passed explicitly (no defaults filled in).

Shapes used throughout:
    C: chains.   S: draws per chain.   N: observations.
    D: inputs.   O: outputs.

Example:
    >>> import numpy as np
    >>> ds = posterior_dataset({"world/noise": np.ones((2, 5, 3))}, {"world/noise": ["output"]},
    ...                        {"output": ["a", "b", "c"]})
    >>> dict(ds.sizes)
    {'chain': 2, 'draw': 5, 'output': 3}
    >>> sorted(observation_groups("world", np.zeros((4, 2)), np.zeros((4, 3)), np.zeros((2, 5, 4)),
    ...                           np.zeros((2, 5, 4, 3)), output_coord=np.arange(3)))
    ['constant_data', 'log_likelihood', 'observed_data', 'posterior_predictive']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from priorguard.priors.sites import variable as site_var

__all__ = [
    "SAMPLE_DIMS",
    "arviz_attrs",
    "nuts_sample_stats",
    "observation_groups",
    "posterior_dataset",
    "sample_coords",
    "sample_stats_dataset",
]

#: The sample dimensions of every posterior-like group, leading every variable.
SAMPLE_DIMS = ("chain", "draw")


def sample_coords(chains: int, draws: int) -> dict[str, np.ndarray]:
    """``chain`` and ``draw`` coordinates: ``0..C-1`` and ``0..S-1``."""
    return {"chain": np.arange(chains), "draw": np.arange(draws)}


def arviz_attrs(sample_dims: Sequence[str]) -> dict[str, Any]:
    """The attributes ArviZ writes on a group it builds (creation time, library, ``sample_dims``).

    Args:
        sample_dims: the group's sample dimensions (``SAMPLE_DIMS``, or ``[]``
            for ``observed_data`` and ``constant_data``).
    """
    import arviz as az

    return az.make_attrs(sample_dims=list(sample_dims))


def posterior_dataset(samples: Mapping[str, Any], dims: Mapping[str, Sequence[str]],
                      coords: Mapping[str, Any]) -> Any:
    """``posterior`` group: one variable per site, dims ``(chain, draw, *dims[site])``.

    Args:
        samples: site name -> ``[C, S, ...]`` draws.
        dims: site name -> the names of its dimensions after ``chain`` and
            ``draw`` (one per trailing axis).
        coords: coordinates, used as given (a dimension missing here has none);
            ``chain`` and ``draw``, when not given, are set from the draws' shape
            (when there are any) after the given ones.

    Returns:
        The ``xarray.Dataset``.
    """
    import xarray as xr

    data_vars = {site_var(name): ([*SAMPLE_DIMS, *dims[name]], np.asarray(v)) for name, v in samples.items()}
    ds = xr.Dataset(data_vars, coords=dict(coords))
    if samples:
        c, s = np.shape(next(iter(samples.values())))[:2]
        missing = {k: v for k, v in sample_coords(c, s).items() if k not in coords}
        if missing:
            ds = ds.assign_coords(missing)
    return ds


def observation_groups(prefix: str, x: Any, y: Any, loglik: Any, y_rep: Any, *, output_coord: Any,
                       input_dim: str = "input", input_coord: Any = None) -> dict[str, Any]:
    """``observed_data``, ``constant_data``, ``log_likelihood`` and ``posterior_predictive``.

    The observation variable is ``<prefix>.y`` in every group but
    ``constant_data``, which holds the inputs as ``<prefix>.x``.

    Args:
        prefix: the model's site prefix (``"world"``).
        x: ``[N, D]`` training inputs.
        y: ``[N, O]`` training targets.
        loglik: ``[C, S, N]`` pointwise log-likelihood (outputs summed), or ``[C, S, N, O]`` per
            output (the observed data's own dims, as ``az.loo_pit`` needs them).
        y_rep: ``[C', S', N, O]`` replicated datasets.
        output_coord: the ``O`` output coordinates.
        input_dim: name of the input dimension (the GP's ``"input"``, the BNN's ``"feature"``).
        input_coord: the ``D`` input coordinates (None: ``0..D-1``).

    Returns:
        Group name -> ``xarray.Dataset``.
    """
    import xarray as xr

    obs = f"{site_var(prefix)}.y"
    n = np.shape(y)[0]
    base = {"obs": np.arange(n), "output": output_coord}
    c, s = np.shape(loglik)[:2]
    inputs = np.arange(np.shape(x)[1]) if input_coord is None else input_coord
    return {
        "observed_data": xr.Dataset({obs: (["obs", "output"], y)}, coords=base),
        "constant_data": xr.Dataset(
            {f"{site_var(prefix)}.x": (["obs", input_dim], x)},
            coords={"obs": np.arange(n), input_dim: inputs}),
        "log_likelihood": xr.Dataset(
            {obs: (["chain", "draw", "obs", "output"][:np.ndim(loglik)], loglik)},
            coords={**sample_coords(c, s), "obs": np.arange(n), **({"output": output_coord} if np.ndim(loglik) == 4 else {})}),
        "posterior_predictive": xr.Dataset(
            {obs: (["chain", "draw", "obs", "output"], y_rep)},
            coords={**sample_coords(*np.shape(y_rep)[:2]), **base}),
    }


def nuts_sample_stats(stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """numpyro's NUTS statistics ``[C, S]`` under ArviZ's names.

    Args:
        stats: ``diverging``, ``num_steps``, ``potential_energy``,
            ``accept_prob`` (``[C, S]``) and, when present, ``energy [C, S]``
            and ``step_size [C]``.

    Returns:
        ``diverging``, ``n_steps``, ``tree_depth`` (``floor(log2(n_steps)) + 1``,
        0 without steps), ``energy`` (when given), ``lp`` (``-potential_energy``),
        ``acceptance_rate`` and ``step_size`` (when given, per draw), each ``[C, S]``.
    """
    steps = stats["num_steps"].astype(np.int64)
    out = {
        "diverging": stats["diverging"].astype(bool),
        "n_steps": steps,
        "tree_depth": np.where(steps > 0, np.floor(np.log2(np.maximum(steps, 1))) + 1, 0).astype(np.int64),
    }
    if "energy" in stats:
        out["energy"] = stats["energy"]
    out["lp"] = -stats["potential_energy"]
    out["acceptance_rate"] = stats["accept_prob"]
    if "step_size" in stats:
        out["step_size"] = np.broadcast_to(stats["step_size"][:, None], stats["diverging"].shape).copy()
    return out


def sample_stats_dataset(stats: Mapping[str, np.ndarray]) -> Any:
    """``sample_stats`` group: every statistic ``[C, S]`` over ``(chain, draw)``."""
    import xarray as xr

    c, s = np.shape(next(iter(stats.values())))[:2]
    return xr.Dataset({k: (list(SAMPLE_DIMS), v) for k, v in stats.items()}, coords=sample_coords(c, s))
