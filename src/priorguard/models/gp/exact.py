"""Exact Gaussian processes: MAP or NUTS hyperparameters, pathwise function draws, ArviZ.

Shapes used throughout:
    N: training points; M: query points.
    D: input columns of ``data.x`` (the model reads the columns its spec names).
    O: outputs (one independent GP per output; kernels and features vmapped, factorisations
       mapped with ``lax.map``, see :func:`priorguard.models.gp.linalg.map_unbatched`).
    S: hyperparameter samples (1 for MAP; thinned NUTS draws otherwise).

What a fit does:

1. **Inputs and targets** (:mod:`priorguard.models.gp.data`): scaled to the unit
   cube and standardised; callers only ever see raw units.
2. **Hyperparameters**: ``map``, the posterior mode in unconstrained space
   (:mod:`priorguard.models.gp.objective`), or ``nuts``: numpyro NUTS, one
   run per output (the outputs are independent a posteriori), through the
   shared compiled runner of :mod:`priorguard.models.inference` (data are
   traced arguments, so a second fit of the same shapes compiles nothing);
   predictions mix over up to ``max_predictive_samples`` evenly thinned
   posterior draws; PyMC's divergence / R-hat / ESS warnings are emitted.
3. **Conditioning** (:mod:`priorguard.models.gp.state`): Cholesky of
   ``K + noise^2 I`` with escalating jitter.
4. **Function draws** (:mod:`priorguard.models.gp.draws`): pathwise conditioning
   (Wilson et al., 2020), returned as :class:`~priorguard.models.base.FunctionDraws`.

The marginal likelihood's gradient is hand-written (one ``potrf`` plus one
inverse from the factor: LAPACK ``potri`` on CPU from N = 1024, XLA below; see
:func:`priorguard.models.gp.linalg.log_marginal_likelihood`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import cached_program
from priorguard.models.base import Data, FunctionDraws, Prediction
from priorguard.models.gp.data import (
    GroupedTargets,
    Prepared,
    as_kernel_spec,
    collapse_duplicate_inputs,
    group_repeated_inputs,
    prepare_data,
)
from priorguard.models.gp.draws import ExactDrawFn, basis_params, exact_draw_params
from priorguard.models.gp.kernels import GPProgram, compile_program
from priorguard.models.gp.loo import loo_from_theta
from priorguard.models.gp.objective import MapResult, fit_map, gp_model, map_objective, theta_from_sites
from priorguard.models.gp.state import (
    ExactGPState,
    FitRecord,
    condition,
    exact_components,
    mixture_log_density,
    mixture_moments,
)
from priorguard.models.inference import NutsProgram, warn_on_diagnostics
from priorguard.priors import sites
from priorguard.priors.models import NOISE_FLOOR, MapInference, NutsInference

#: Folded into a fit's key for the posterior-predictive draws of its DataTree (the fit's own
#: use of the key is unchanged).
PREDICTIVE_STREAM = 0x9C0D

__all__ = ["GPPosterior", "condition_gp", "fit_exact_gp", "posterior_from_map"]


class GPPosterior(eqx.Module):
    """A fitted exact GP (MAP, NUTS or fixed hyperparameters); a :class:`~priorguard.models.base.Posterior`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from priorguard.models.base import as_data
        >>> from priorguard.priors.kernels import StationaryKernel
        >>> x = jnp.linspace(0.0, 1.0, 8)[:, None]
        >>> post = condition_gp(StationaryKernel(kind="rbf", lengthscale=0.3, variance=1.0),
        ...                     as_data(x, jnp.sin(6 * x)), noise=0.1, standardize=False,
        ...                     feature_ranges=[(0.0, 1.0)])
        >>> post.predict(x).mean.shape
        (8, 1)
        >>> post.sample_functions(jax.random.key(0), 3)(x).shape
        (3, 8, 1)
    """

    state: ExactGPState
    prep: Prepared = eqx.field(static=True)
    record: FitRecord = eqx.field(static=True)

    # -- Posterior protocol ---------------------------------------------------------
    @property
    def input_dim(self) -> int:
        return self.prep.input_dim

    @property
    def output_dim(self) -> int:
        return self.prep.num_outputs

    def predict(self, x: Float[Array, "M D"]) -> Prediction:
        """Predictive moments at ``x`` (raw units), mixed over hyperparameter samples.

        Args:
            x: ``[M, D]`` inputs with the same columns as the training ``data.x``.

        Returns:
            :class:`~priorguard.models.base.Prediction` with ``[M, O]`` fields.
        """
        mean, var, noise = exact_components(self.state, x)
        return mixture_moments(self.state.weights, mean, var, noise)

    def to_gpjax(self, *, output: int = 0, sample: int | None = None) -> Any:
        """The same GP as GPJax 1.0 objects: a ``ConjugateModel`` and its ``Dataset`` (model units),
        with ``predict(x)`` in raw units equal to this posterior's mean and epistemic variance.

        See :func:`priorguard.models.gp._gpjax.export_exact` (arguments and errors).
        """
        from priorguard.models.gp._gpjax import export_exact

        return export_exact(self.state, output=output, sample=sample)

    def sample_moments(self, x: Float[Array, "M D"]) -> tuple[Array, Array, Array]:
        """Per-hyperparameter-sample latent mean, latent variance and noise variance, each ``[S, M, O]``."""
        return exact_components(self.state, x)

    def log_predictive_density(self, x: Float[Array, "M D"], y: Float[Array, "M O"]) -> Float[Array, " M"]:
        """``log p(y_i | x_i, data)`` summed over outputs, mixed over hyperparameter samples."""
        mean, var, noise = exact_components(self.state, x)
        y = jnp.asarray(y, dtype=mean.dtype).reshape(mean.shape[1:])
        return mixture_log_density(jnp.log(self.state.weights), mean, var + noise, y)

    def sample_functions(self, key: PRNGKeyArray, n: int, *, num_features: int = 512) -> FunctionDraws:
        """``n`` pathwise posterior draws (Wilson et al., 2020), callable at any input.

        Each draw picks a hyperparameter sample (by weight), draws a prior
        function from random features (see :mod:`priorguard.models.gp.features`) and
        adds ``k(x, X) K^-1 (y - f_prior(X) - eps)``.

        Args:
            key: consumed.
            n: number of draws ``S``.
            num_features: random features per top-level kernel term.
        """
        st = self.state
        # draws are made in chunks of at most ~2e7 feature evaluations, spread evenly
        # (100 draws in chunks of at most 76 are 2 x 50, not 2 x 76 with 52 padded)
        cap = max(1, min(n, int(2e7 // max(1, st.x.shape[0] * num_features * st.y.shape[1]))))
        chunks = -(-n // cap)
        batch = -(-n // chunks)
        params = exact_draw_params(st, key, n, num_features, batch)
        if st.grouped:  # the update is over the unique inputs already
            x_basis = np.asarray(st.basis)
        else:
            x_basis, params["v"] = collapse_duplicate_inputs(np.asarray(st.x), params["v"])
        params["basis"] = basis_params(n, jnp.asarray(x_basis), st.low, st.scale, st.y_mean, st.y_scale)
        return FunctionDraws(params=params, apply_fn=ExactDrawFn(st.program.anonymous(), num_features, st.columns))

    def to_datatree(self) -> Any:
        """ArviZ ``xarray.DataTree``; see :func:`priorguard.models.gp.groups.exact_datatree`."""
        from priorguard.models.gp.groups import exact_datatree

        return exact_datatree(self)

    # -- extras ---------------------------------------------------------------------
    @property
    def jitter(self) -> float:
        """Largest absolute jitter added to a training covariance diagonal (model units)."""
        return float(self.record.optimizer.get("jitter_max", 0.0))

    @property
    def program(self) -> GPProgram:
        return self.state.program

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def hyperparameters(self) -> dict[str, np.ndarray]:
        """Constrained samples of every free site, ``[C, S, O, ...]`` (model units)."""
        return dict(self.record.samples)

    def map_hyperparameters(self) -> dict[str, np.ndarray]:
        """Kernel, noise and mean values of the first (for MAP: only) sample, ``[O, ...]``."""
        return {k: np.asarray(v[0]) for k, v in self.state.theta.items()}

    @property
    def log_joint(self) -> float:
        """Log joint (MAP: at the mode, in unconstrained space; NUTS: mean over draws)."""
        return float(np.mean(self.record.log_joint))

    def loo_log_density(self) -> Float[Array, "S N"]:
        """Exact leave-one-out ``log p(y_i | y_-i, theta_s)`` per used sample (raw units)."""
        st = self.state
        return loo_from_theta(st.program)(st.theta, st.x, st.y, st.y_scale)



def _build_posterior(program: GPProgram, prep: Prepared, theta: Mapping[str, Array], weights: np.ndarray,
                     record: FitRecord) -> GPPosterior:
    f = condition(program, theta, prep, stacklevel=4)
    record.optimizer["jitter_max"] = float(np.max(np.asarray(f.jitter)))
    record.optimizer["jitter"] = np.asarray(f.jitter)
    state = ExactGPState(
        program=program, columns=prep.columns, x=jnp.asarray(prep.x), y=jnp.asarray(prep.y),
        theta={k: jnp.asarray(v) for k, v in theta.items()}, chol=f.chol, alpha=f.alpha,
        weights=jnp.asarray(weights, dtype=jnp.float64), low=jnp.asarray(prep.low), scale=jnp.asarray(prep.scale),
        y_mean=jnp.asarray(prep.y_mean), y_scale=jnp.asarray(prep.y_scale),
        basis=f.basis, counts=f.counts, inverse=f.inverse, jitter=f.jitter, grouped=f.grouped,
    )
    return GPPosterior(state=state, prep=prep, record=record)


def fit_exact_gp(
    kernel: Any,
    data: Data,
    *,
    key: PRNGKeyArray,
    noise: Any = None,
    mean: str = "zero",
    inference: MapInference | NutsInference | None = None,
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
    use_prior: bool = True,
    max_predictive_samples: int = 100,
    init: Mapping[str, Any] | None = None,
    prior_mean: float | None = None,
    noise_floor: float = NOISE_FLOOR,
) -> GPPosterior:
    """Fits an exact GP from spec objects (the lower-level path of :func:`fit_gp`).

    Args:
        kernel: a fixed kernel spec (e.g. ``StationaryKernel(kind="rbf")``,
            ``CompositeKernel``) or its dict form.
        data: ``x [N, D]`` raw features, ``y [N, O]`` raw targets.
        key: PRNG key, consumed (restart points; NUTS chains).
        noise: observation-noise std: a float (fixed) or a ``Prior``; None: default prior.
        mean: ``"zero"`` or ``"constant"`` (``Normal(0, 1)`` on standardised targets).
        inference: ``MapInference`` (default) or ``NutsInference``.
        feature_names, features, feature_ranges, standardize, output_names:
            see :func:`prepare_data`.
        site_prefix: first part of every site name.
        use_prior: False maximises the marginal likelihood alone (type-II ML,
            same unconstrained coordinates, no Jacobian); MAP only.
        max_predictive_samples: NUTS draws kept (evenly thinned) for prediction.
        init: MAP starting point ``{site: [O, ...]}`` in unconstrained space.
        prior_mean: a fixed prior mean in the targets' units (see :func:`prepare_data`).
        noise_floor: a std (model units) added in quadrature to a learned noise;
            a fixed ``noise`` is used as given.

    Returns:
        A :class:`GPPosterior`.
    """
    inference = inference if inference is not None else MapInference(method="map")
    prep = prepare_data(data, feature_names=feature_names, features=features, feature_ranges=feature_ranges,
                        standardize=standardize, output_names=output_names, prior_mean=prior_mean)
    program = compile_program(as_kernel_spec(kernel), noise=noise, mean=mean,
                                      feature_names=prep.feature_names, site_prefix=site_prefix, zero_at=prep.zero_at,
                                      noise_floor=noise_floor)
    if isinstance(inference, NutsInference):
        if not use_prior:
            raise ValueError("use_prior=False is a MAP option; NUTS samples the posterior")
        return _fit_nuts(program, prep, inference, key=key, max_predictive_samples=max_predictive_samples)
    result = fit_map(program, prep, inference, key=key, use_prior=use_prior, init=init)
    return posterior_from_map(program, prep, result, use_prior=use_prior,
                              predictive_key=jax.random.fold_in(key, PREDICTIVE_STREAM))


def posterior_from_map(program: GPProgram, prep: Prepared, result: MapResult, *, use_prior: bool,
                       predictive_key: PRNGKeyArray | None = None) -> GPPosterior:
    """Conditions on the MAP point of ``result``; ``predictive_key`` keys its DataTree's draws."""
    objective = map_objective(program, prep.num_outputs, use_prior=use_prior)
    values = objective.constrain(jnp.asarray(result.u_flat)) if objective.size else {}
    values = {k: np.asarray(v)[None] for k, v in values.items()}  # [1, O, ...]
    theta = theta_from_sites(program, {k: v for k, v in values.items()}, (1, prep.num_outputs))
    record = FitRecord(
        method="map" if use_prior else "ml2",
        samples={k: v[None] for k, v in values.items()},  # [1, 1, O, ...]
        log_joint=np.asarray([[-result.value]]),
        optimizer={"values": result.values, "evaluations": result.evaluations, "u_flat": result.u_flat},
        key=predictive_key,
    )
    return _build_posterior(program, prep, theta, np.ones(1), record)


def condition_gp(
    kernel: Any,
    data: Data,
    *,
    noise: float,
    hyperparameters: Mapping[str, Any] | None = None,
    mean_constant: float | None = None,
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
) -> GPPosterior:
    """A GP posterior at given hyperparameters (no fitting).

    Args:
        kernel: kernel spec; its float hyperparameters are used as given.
        data: ``x [N, D]``, ``y [N, O]``.
        noise: observation-noise std (model units: standardised targets).
        hyperparameters: values for the kernel's remaining (prior-valued)
            hyperparameters, by site name relative to the prefix
            (``"kernel/lengthscale"``) or in full; arrays may be ``[...]`` or
            ``[O, ...]``.
        mean_constant: a constant mean (model units); None for zero mean.
        feature_names, features, feature_ranges, standardize, output_names,
            site_prefix: as in :func:`fit_exact_gp`.

    Returns:
        A :class:`GPPosterior` with one hyperparameter sample.
    """
    prep = prepare_data(data, feature_names=feature_names, features=features, feature_ranges=feature_ranges,
                        standardize=standardize, output_names=output_names)
    program = compile_program(as_kernel_spec(kernel), noise=float(noise),
                                      mean="zero" if mean_constant is None else "constant",
                                      feature_names=prep.feature_names, site_prefix=site_prefix, zero_at=prep.zero_at)
    given = {}
    for name, value in (hyperparameters or {}).items():
        site = name if name.startswith(site_prefix + "/") else f"{site_prefix}/{name}"
        given[site] = value
    if mean_constant is not None:
        given[sites.mean_site(site_prefix)] = mean_constant
    o = prep.num_outputs
    theta = {}
    for h in program.hypers:
        if h.fixed is not None:
            value = np.full(h.shape, h.fixed)
        elif h.site in given:
            value = np.asarray(given.pop(h.site), dtype=np.float64)
        else:
            free = [hh.site for hh in program.hypers if hh.free]
            raise ValueError(f"condition_gp needs a value for {h.site!r}; free hyperparameters: {free}")
        value = np.broadcast_to(value, (o, *h.shape)) if value.shape != (o, *h.shape) else value
        theta[h.site] = jnp.asarray(value)[None]
    if given:
        raise ValueError(f"unknown hyperparameters {sorted(given)}; sites are {[h.site for h in program.hypers]}")
    record = FitRecord(method="fixed", samples={}, log_joint=np.full((1, 1), np.nan))
    return _build_posterior(program, prep, theta, np.ones(1), record)


def _fit_nuts(program: GPProgram, prep: Prepared, inference: NutsInference, *, key: PRNGKeyArray,
              max_predictive_samples: int) -> GPPosterior:
    anonymous = program.anonymous()  # feature names do not change the sampler
    runner = cached_program(
        ("gp/nuts", anonymous, inference.warmup, inference.samples, inference.chains, inference.target_accept,
         inference.max_tree_depth),
        lambda: NutsProgram(functools.partial(gp_model, anonymous), warmup=inference.warmup,
                            samples=inference.samples, chains=inference.chains,
                            target_accept=inference.target_accept, max_tree_depth=inference.max_tree_depth,
                            name="gp/nuts"),
    )
    grouped = group_repeated_inputs(program, prep.x, prep.y)  # the same density on the unique inputs
    x = jnp.asarray(prep.x if grouped is None else grouped[0])
    if grouped is None:
        per_output = [jnp.asarray(prep.y[:, o]) for o in range(prep.num_outputs)]
    else:
        g = GroupedTargets(*(jnp.asarray(a) for a in grouped[1]))
        per_output = [GroupedTargets(g.counts, g.mean[:, o], g.scatter[:, o]) for o in range(prep.num_outputs)]
    outs = [runner.run(k, x, y) for k, y in zip(jax.random.split(key, prep.num_outputs), per_output)]
    site_names = list(outs[0]["samples"])
    samples = {s: np.stack([np.asarray(out["samples"][s]) for out in outs], axis=2) for s in site_names}  # [C, S, O, ...]
    stats = {k: np.stack([np.asarray(out["stats"][k]) for out in outs], axis=-1) for k in outs[0]["stats"]}
    c, s = stats["diverging"].shape[:2]
    steps = stats["num_steps"].astype(np.int64)
    sample_stats = {
        "diverging": stats["diverging"].any(axis=-1),
        "tree_depth": np.where(steps > 0, np.floor(np.log2(np.maximum(steps, 1))) + 1, 0).astype(np.int64).max(-1),
        "n_steps": steps.max(axis=-1),
        "lp": -stats["potential_energy"].sum(axis=-1),
        "acceptance_rate": stats["accept_prob"].mean(axis=-1),
    }
    record = FitRecord(method="nuts", samples=samples, log_joint=sample_stats["lp"], sample_stats=sample_stats,
                       key=jax.random.fold_in(key, PREDICTIVE_STREAM))  # the DataTree's draws, from the fit's key
    record.diagnostics.update(_warn_nuts(record, prep))
    flat = {k: v.reshape(c * s, *v.shape[2:]) for k, v in samples.items()}
    total = c * s
    keep = np.unique(np.linspace(0, total - 1, min(total, max_predictive_samples)).round().astype(int))
    theta = theta_from_sites(program, {k: v[keep] for k, v in flat.items()}, (len(keep), prep.num_outputs))
    return _build_posterior(program, prep, theta, np.full(len(keep), 1.0 / len(keep)), record)


def _warn_nuts(record: FitRecord, prep: Prepared) -> dict[str, float]:
    import xarray as xr

    post = xr.Dataset({
        name.replace("/", "."): (["chain", "draw", *[f"d{i}" for i in range(v.ndim - 2)]], v)
        for name, v in record.samples.items()
    })
    return warn_on_diagnostics(post, record.sample_stats["diverging"], stacklevel=5)

