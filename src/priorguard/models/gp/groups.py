"""An exact GP's ArviZ DataTree (:func:`exact_datatree`) and the groups GP DataTrees share.

``prior`` holds draws of the same free sites as ``posterior`` from their hyperpriors
(same variables, dims and units), so ``azp.plot_prior_posterior`` and prior-sensitivity
checks read a run file as it is; ``prior_predictive`` holds, per prior draw, data drawn
at the training inputs in the targets' units (``azp.plot_ppc_dist(dt, group="prior_predictive")``
sets them beside the observed data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.models import datatree
from priorguard.models.gp.data import Prepared
from priorguard.models.gp.kernels import GPProgram
from priorguard.models.gp.laplace import laplace_loo_draws
from priorguard.models.gp.loo import leave_one_state_out, loo_density, loo_from_theta, loo_replicates
from priorguard.models.gp.objective import theta_from_sites
from priorguard.models.gp.state import exact_components, mixture_moments
from priorguard.priors import sites

__all__ = ["exact_datatree", "observation_groups", "posterior_dataset", "prior_dataset", "prior_predictive_dataset"]


def posterior_dataset(program: GPProgram, samples: Mapping[str, np.ndarray], output_names: Sequence[str]) -> Any:
    """``posterior`` group of a GP: every free site, dims ``(chain, draw, output[, <site>.feature])``."""
    by_site = {h.site: h for h in program.hypers}
    dims, coords = {}, {"output": list(output_names)}
    for name, v in samples.items():
        h, var = by_site.get(name), sites.variable(name)
        named = h is not None and bool(h.dim_names)
        dims[name] = ["output", *(f"{var}.feature" if named and i == 0 else f"{var}_dim_{i}" for i in range(v.ndim - 3))]
        if named and v.ndim > 3:
            coords[f"{var}.feature"] = list(h.dim_names)
    return datatree.posterior_dataset(samples, dims, coords)


def prior_dataset(program: GPProgram, output_names: Sequence[str], key: Any, draws: int) -> Any:
    """``prior`` group: ``draws`` draws of every free site from its hyperprior, per output,
    with :func:`posterior_dataset`'s variables and dims (constrained, model units)."""
    from numpyro.infer import Predictive

    from priorguard.models.gp.objective import gp_model

    num_outputs = len(output_names)
    drawn = Predictive(lambda: gp_model(program), num_samples=draws * num_outputs)(key)  # hyperpriors' own sites too
    samples = {k: np.asarray(v).reshape(1, draws, num_outputs, *np.shape(v)[1:]) for k, v in drawn.items()}
    return posterior_dataset(program, samples, output_names)


def observation_groups(prep: Prepared, prefix: str, loglik: np.ndarray, y_rep: np.ndarray) -> dict[str, Any]:
    """``observed_data``, ``constant_data`` (inputs along ``feature``, named where the model
    reads every column given), ``log_likelihood`` (``[C, S, N]``) and ``posterior_predictive``."""
    names = list(prep.feature_names) if len(prep.feature_names) == prep.raw_x.shape[1] else None
    return datatree.observation_groups(prefix, prep.raw_x, prep.raw_y, loglik, y_rep,
                                       output_coord=list(prep.output_names), input_dim="feature", input_coord=names)


#: Most distinct training inputs a ``prior_predictive`` group is drawn at (one Cholesky per draw).
PRIOR_PREDICTIVE_MAX_INPUTS = 512
#: Entries of the Gram matrices held at once while drawing it (2e7: 160 MB).
PRIOR_PREDICTIVE_CHUNK = 2e7


def prior_predictive_dataset(program: GPProgram, prep: Prepared, prior: Any, key: Any) -> Any | None:
    """``prior_predictive``: for each draw of the ``prior`` group, a function drawn from the GP
    prior at the training inputs plus noise, in the targets' own units (``<prefix>.y``, dims
    ``(chain, draw, obs, output)`` as ``observed_data``). None above
    :data:`PRIOR_PREDICTIVE_MAX_INPUTS` distinct inputs."""
    import xarray as xr

    x_unique, inverse = np.unique(np.asarray(prep.x), axis=0, return_inverse=True)
    if len(x_unique) > PRIOR_PREDICTIVE_MAX_INPUTS:
        return None
    draws, outputs = prior.sizes["draw"], prep.num_outputs
    values = {h.site: np.asarray(prior[sites.variable(h.site)].values).reshape(draws * outputs, *h.shape)
              for h in program.hypers if h.fixed is None}
    theta = theta_from_sites(program, values, (draws * outputs,))
    xu, n = jax.numpy.asarray(x_unique), len(x_unique)
    mean = np.broadcast_to(np.asarray(jax.vmap(program.mean_value)(theta)), (draws * outputs,))
    k_f, k_y = jax.random.split(key)
    z = np.asarray(jax.random.normal(k_f, (draws * outputs, n)))
    f = np.empty((draws * outputs, n))
    step = max(1, int(PRIOR_PREDICTIVE_CHUNK // (n * n)))  # Gram matrices held at once
    for lo in range(0, draws * outputs, step):
        part = jax.tree_util.tree_map(lambda v: v[lo:lo + step], theta)  # noqa: B023 - used at once
        gram = np.asarray(jax.vmap(lambda th: program.kernel.gram(th, xu, xu, same=True))(part))
        jitter = 1e-6 * (1.0 + np.mean(np.diagonal(gram, axis1=1, axis2=2), axis=1))
        chol = np.linalg.cholesky(gram + jitter[:, None, None] * np.eye(n))
        f[lo:lo + step] = np.einsum("snm,sm->sn", chol, z[lo:lo + step]) + mean[lo:lo + step, None]
    noise = np.asarray(theta[sites.noise_site(program.site_prefix)]).reshape(-1, 1)
    y = f[:, inverse] + noise * np.asarray(jax.random.normal(k_y, (draws * outputs, len(inverse))))
    y = y.reshape(draws, outputs, -1).transpose(0, 2, 1) * np.asarray(prep.y_scale) + np.asarray(prep.y_mean)
    return xr.Dataset({f"{sites.variable(program.site_prefix)}.y": (["chain", "draw", "obs", "output"], y[None])},
                      coords={"chain": [0], "draw": np.arange(draws), "obs": np.arange(len(inverse)),
                              "output": list(prep.output_names)})


def exact_datatree(post: Any, *, ppc_draws: int = 100) -> Any:
    """ArviZ DataTree of an exact GP.

    Groups: ``posterior`` (free sites; MAP as ``chain=1, draw=1``; NUTS every
    draw), ``sample_stats`` (NUTS: ``diverging``, ``tree_depth``, ``n_steps``,
    ``lp``, ``acceptance_rate``; MAP: ``lp``), ``observed_data``,
    ``constant_data``, ``log_likelihood``, ``posterior_predictive``, ``prior``
    (``ppc_draws`` draws of the free sites from their hyperpriors, as ``posterior``) and
    ``prior_predictive`` (data drawn from each prior draw at the training inputs; see
    :func:`~priorguard.models.gp.groups.prior_predictive_dataset`).

    ``log_likelihood``: the exact LOO density ``log p(y_i | y_-i, theta_s)`` per
    hyperparameter draw and output (observed_data's dims; raw units). A GP's
    observations are not independent given theta, but this factor makes
    ``az.loo``'s weights ``1 / p(y_i | y_-i, theta)`` exact: its ``elpd`` is the LOO
    predictive density with theta integrated. A MAP fit's ``posterior`` holds
    ``ppc_draws`` Laplace draws at the MAP point (:mod:`priorguard.models.gp.laplace`),
    so ``az.loo`` / ``az.compare`` / ``az.loo_pit`` run on it; the exact LOO at the
    MAP point is ``elpd_loo_exact``. ``elpd_loso`` / ``loso_states``: leave one state
    out (absent with white-noise kernels; NUTS adds ``loso_pareto_k_max``).
    ``posterior_predictive``: one replicate per draw (``chain x draw``, as ``az.loo_pit``
    needs), each observation from its leave-one-out predictive under that draw (so that
    ``az.loo_pit`` is exact); a fit with no draws (fixed hyperparameters) has ``ppc_draws``
    replicates of the predictive. Variable names are site names with ``/`` written ``.``.
    """
    import xarray as xr

    prep, record, st = post.prep, post.record, post.state
    prefix = st.program.site_prefix
    groups: dict[str, Any] = {"posterior": posterior_dataset(st.program, record.samples, prep.output_names)}
    if record.sample_stats is not None:
        groups["sample_stats"] = datatree.sample_stats_dataset(record.sample_stats)
    elif record.method != "fixed":
        groups["sample_stats"] = datatree.sample_stats_dataset({"lp": record.log_joint})
    k_draws, k_noise = jax.random.split(jax.random.key(0) if record.key is None else record.key)
    moments = None  # LOO residuals and variances [C, S, O, N] (model units), where there are draws
    if record.method == "nuts":
        first = next(iter(record.samples.values()))
        c, s = first.shape[:2]
        flat = {k: v.reshape(c * s, *v.shape[2:]) for k, v in record.samples.items()}
        theta = theta_from_sites(st.program, flat, (c * s, prep.num_outputs))
        moments = (c, s, loo_from_theta(st.program, moments=True)(theta, st.x, st.y, st.y_scale))
    else:
        loo = np.asarray(loo_from_theta(st.program, per_output=True)(st.theta, st.x, st.y, st.y_scale))[None]
    laplace: dict[str, Any] = {}
    if record.method in ("map", "ml2") and np.size(record.optimizer.get("u_flat", ())) > 0:
        # draws from the Laplace approximation, so that az.loo / az.compare see a posterior sample
        samples, lp, laplace, at_draws = laplace_loo_draws(st, prep, record, ppc_draws,
                                                           jax.random.fold_in(k_draws, 1))
        map_loo, moments = loo, (1, ppc_draws, at_draws)
        groups["posterior"] = posterior_dataset(st.program, {k: v[None] for k, v in samples.items()},
                                                prep.output_names)
        groups["sample_stats"] = datatree.sample_stats_dataset({"lp": lp[None]})
    if moments is not None:
        # one replicate per draw, from each observation's leave-one-out predictive under that draw:
        # log_likelihood is that predictive's density, so az.loo_pit's importance weights turn the
        # replicates into exact LOO-PIT values (replicates of the full-data fit, which saw y_i, pull
        # every PIT towards 0.5)
        c, s, (resid, var) = moments
        loo = loo_density(resid, var, st.y_scale).reshape(c, s, *st.y.shape)
        y_rep = loo_replicates(resid, var, prep.raw_y, st.y_scale, k_noise).reshape(c, s, *st.y.shape)
    else:  # one point: replicates of the predictive (function draw plus noise)
        draws = post.sample_functions(k_draws, ppc_draws)
        f = np.asarray(draws(jnp.asarray(prep.raw_x)))  # [R, N, O]
        noise_sd = np.sqrt(np.asarray(mixture_moments(st.weights, *exact_components(st, jnp.asarray(prep.raw_x))
                                                      ).aleatoric_var))
        y_rep = (f + np.asarray(jax.random.normal(k_noise, f.shape, jnp.float64)) * noise_sd)[None]
    groups.update(observation_groups(prep, prefix, loo, y_rep))
    groups["prior"] = prior_dataset(st.program, prep.output_names, jax.random.fold_in(k_draws, 2), ppc_draws)
    prior_pred = prior_predictive_dataset(st.program, prep, groups["prior"], jax.random.fold_in(k_draws, 3))
    if prior_pred is not None:
        groups["prior_predictive"] = prior_pred
    dt = xr.DataTree.from_dict(groups)
    dt.attrs.update({"model": "gp", "inference": record.method, "site_prefix": prefix,
                     "kernel": st.program.describe(), "jitter": post.jitter,
                     "noise_floor": st.program.noise_floor})
    if record.method != "nuts":
        dt.attrs["elpd_loo_exact"] = float(np.sum(map_loo if laplace else loo))  # at the MAP point
    dt.attrs.update(laplace)
    loso = leave_one_state_out(st, theta if record.method == "nuts" else None)
    if loso is not None:
        dt.attrs["elpd_loso"] = loso["elpd"]
        dt.attrs["loso_states"] = loso["states"]
        if "pareto_k_max" in loso:
            dt.attrs["loso_pareto_k_max"] = loso["pareto_k_max"]
    return dt

