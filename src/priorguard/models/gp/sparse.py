"""Sparse variational GP (SVGP) with inducing points, trained on minibatches.

Shapes: N training points, M inducing points, B minibatch, D input columns,
O outputs (one independent SVGP per output).

Fitting, for Gaussian likelihoods (Hensman et al., 2013; Titsias, 2009;
Salimbeni et al., 2018):

0. Hyperparameters start at the MAP of an exact GP on a random subset of
   :data:`SUBSET_INIT` points (``init="subset"``) or at the prior median.
1. ``steps`` minibatch steps in one compiled ``lax.scan``, each
   ``O(B M^2 + M^3)`` whatever N is: hyperparameters (with their declared
   hyperpriors, MAP in unconstrained space as for exact GPs) and inducing
   inputs ``Z`` take an Adam step on ``(N / B) sum_b E_q log N(y_b | f_b,
   noise^2)`` plus the log prior; the whitened ``q(v)`` (``u = chol(Kzz) v``)
   takes a natural-gradient step towards its minibatch optimum. ``Z`` starts
   at M training inputs picked at random.
2. ``q`` is then set to its closed-form optimum for those hyperparameters and
   ``Z`` in one chunked pass over all N points, ``O(N M^2)``:
   ``Lambda = I + A W A^T``, ``m = Lambda^-1 A W y``, ``S S^T = Lambda^-1``
   with ``A = chol(Kzz)^-1 Kzx`` and ``W`` the noise precisions; the same pass
   gives Titsias' collapsed bound, reported as the fit's evidence lower bound.

Function draws are pathwise (Wilson et al., 2020): a random-feature prior draw
plus ``k(x, Z) Kzz^-1 (u - f_prior(Z))`` with ``u ~ q``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from priorguard._compile import cached_program, count_trace
from priorguard.models.base import Data, FunctionDraws, Prediction
from priorguard.models.gp.data import Prepared, as_kernel_spec, prepare_data
from priorguard.models.gp.draws import ExactDrawFn, basis_params
from priorguard.models.gp.exact import PREDICTIVE_STREAM
from priorguard.models.gp.groups import observation_groups, posterior_dataset, prior_dataset, prior_predictive_dataset
from priorguard.models.gp.kernels import GPProgram, compile_program
from priorguard.models.gp.linalg import GPNumericalError, map_unbatched
from priorguard.models.gp.objective import fit_map, gp_model, initial_unconstrained, map_objective, theta_from_sites
from priorguard.models.gp.state import FitRecord, mixture_log_density
from priorguard.priors.models import NOISE_FLOOR, MapInference, SparseSpec

__all__ = ["SparseGPPosterior", "fit_sparse_gp"]


#: Jitter on the inducing covariance, relative to its mean diagonal.
INDUCING_JITTER = 1e-6
#: Points per chunk in full-data passes (closed-form q, training log-likelihood).
CHUNK = 4096
#: Natural-gradient step size of q per minibatch.
NATGRAD_STEP = 0.1
#: Points of the exact-GP fit that starts the hyperparameters.
SUBSET_INIT = 256


def _kzz_chol(program: GPProgram, theta: Mapping[str, Array], z: Array) -> Array:
    kzz = program.kernel.gram(theta, z, z, same=False)
    jitter = INDUCING_JITTER * jnp.mean(jnp.diagonal(kzz))
    return jnp.linalg.cholesky(kzz + jitter * jnp.eye(z.shape[0], dtype=z.dtype))


def _noise_var(program: GPProgram, theta: Mapping[str, Array], x: Array) -> Array:
    var = theta[program.noise.site] ** 2 * jnp.ones(x.shape[0], dtype=x.dtype)
    if program.kernel.has_white():
        var = var + program.kernel.gram_diag(theta, x, white=True) - program.kernel.gram_diag(
            theta, x, white=False)
    return var


def _marginals(program: GPProgram, theta: Mapping[str, Array], z: Array, chol_z: Array, q_mu: Array,
               q_sqrt: Array, x: Array) -> tuple[Array, Array]:
    """Latent mean and variance ``[B]`` under a whitened ``q = N(q_mu, q_sqrt q_sqrt^T)``."""
    kzx = program.kernel.gram(theta, z, x, same=False)
    a = jax.scipy.linalg.solve_triangular(chol_z, kzx, lower=True)  # [M, B]
    mean = a.T @ q_mu + program.mean_value(theta)
    sa = q_sqrt.T @ a
    var = program.kernel.gram_diag(theta, x, white=False) - jnp.sum(a * a, 0) + jnp.sum(sa * sa, 0)
    return mean, jnp.maximum(var, 1e-12)


class SvgpTrainer:
    """Compiled minibatch SVGP training for one (program, O, B, steps, learning rate).

    Hyperparameters and inducing inputs take Adam steps on the minibatch
    estimate of the expected log-likelihood plus the log prior (``q`` held
    fixed); ``q``, kept in natural parameters (precision ``Lambda``,
    ``h = Lambda m``, whitened), takes natural-gradient steps of size
    :data:`NATGRAD_STEP` towards its minibatch optimum
    ``Lambda* = I + (N/B) A W A^T``, ``h* = (N/B) A W (y - mu)``
    (Salimbeni et al., 2018; exact in one step on the full batch).
    """

    def __init__(self, program: GPProgram, num_outputs: int, sparse: SparseSpec) -> None:
        import optax
        from numpyro.infer.util import constrain_fn, potential_energy

        self.program = program
        model = functools.partial(gp_model, program)
        opt = optax.adam(sparse.learning_rate)
        batch = sparse.batch_size
        gamma = NATGRAD_STEP

        def loss_one(params: Mapping[str, Any], lam: Array, h: Array, x: Array, y: Array, idx: Array
                     ) -> tuple[Array, tuple[Array, Array]]:
            u = params["u"]
            prior_term = potential_energy(model, (None, None), {}, u) if u else jnp.zeros(())
            theta = theta_from_sites(program, constrain_fn(model, (None, None), {}, u), ())
            z = params["z"]
            chol_z = _kzz_chol(program, theta, z)
            xb, yb = x[idx], y[idx]
            kzx = program.kernel.gram(theta, z, xb, same=False)
            a = jax.scipy.linalg.solve_triangular(chol_z, kzx, lower=True)  # [M, B]
            chol_lam = jnp.linalg.cholesky(jax.lax.stop_gradient(lam))
            q_mu = jax.scipy.linalg.cho_solve((chol_lam, True), jax.lax.stop_gradient(h))
            mu0 = program.mean_value(theta)
            mean = a.T @ q_mu + mu0
            sa = jax.scipy.linalg.solve_triangular(chol_lam, a, lower=True)  # S = Lambda^-1
            var = program.kernel.gram_diag(theta, xb, white=False) - jnp.sum(a * a, 0) + jnp.sum(sa * sa, 0)
            nv = _noise_var(program, theta, xb)
            ell = -0.5 * jnp.sum(jnp.log(2 * jnp.pi * nv) + ((yb - mean) ** 2 + jnp.maximum(var, 0.0)) / nv)
            scale = x.shape[0] / idx.shape[0]
            a_s, w_s = jax.lax.stop_gradient(a), jax.lax.stop_gradient(1.0 / nv)
            lam_t = jnp.eye(a.shape[0], dtype=a.dtype) + scale * (a_s * w_s) @ a_s.T
            h_t = scale * a_s @ (w_s * (yb - jax.lax.stop_gradient(mu0)))
            return -scale * ell + prior_term, (lam_t, h_t)

        def total(params: Mapping[str, Any], lam: Array, h: Array, x: Array, y: Array, idx: Array) -> Any:
            loss, aux = map_unbatched(lambda p, lm, hh, yy: loss_one(p, lm, hh, x, yy, idx),
                                              params, lam, h, y.T)
            return jnp.sum(loss), aux

        def train(params: Mapping[str, Any], key: PRNGKeyArray, x: Array, y: Array) -> tuple[Any, Array, Array, Array]:
            count_trace("gp/svgp_train")
            n, m = x.shape[0], params["z"].shape[1]
            lam0 = jnp.broadcast_to(jnp.eye(m, dtype=x.dtype), (num_outputs, m, m))
            h0 = jnp.zeros((num_outputs, m), dtype=x.dtype)

            def step(carry: Any, k: PRNGKeyArray) -> tuple[Any, Array]:
                p, state, lam, h = carry
                idx = jax.random.randint(k, (batch,), 0, n)
                (value, (lam_t, h_t)), grad = jax.value_and_grad(total, has_aux=True)(p, lam, h, x, y, idx)
                grad = jax.tree_util.tree_map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
                updates, state = opt.update(grad, state, p)
                ok = jnp.all(jnp.isfinite(lam_t)) & jnp.all(jnp.isfinite(h_t))
                lam = jnp.where(ok, (1 - gamma) * lam + gamma * lam_t, lam)
                h = jnp.where(ok, (1 - gamma) * h + gamma * h_t, h)
                return (optax.apply_updates(p, updates), state, lam, h), value

            keys = jax.random.split(key, sparse.steps)
            (params, _, lam, h), losses = jax.lax.scan(step, (params, opt.init(params), lam0, h0), keys)
            return params, lam, h, losses

        def constrain(u: Mapping[str, Array]) -> dict[str, Array]:
            return jax.vmap(lambda uo: constrain_fn(model, (None, None), {}, uo))(u)

        def log_prior(u: Mapping[str, Array]) -> Array:
            return -jnp.sum(jax.vmap(lambda uo: potential_energy(model, (None, None), {}, uo))(u))

        self.train = jax.jit(train)
        self.constrain = jax.jit(constrain)
        self.log_prior = jax.jit(log_prior)


def _optimal_q_one(program: GPProgram, theta: Mapping[str, Array], z: Array, x: Array, y: Array,
                   mask: Array) -> tuple[Array, Array, Array, Array]:
    """Closed-form whitened ``q`` and the collapsed bound for one output.

    ``x [C, K, D]``, ``y [C, K]`` in chunks, ``mask [C, K]`` marks real points.
    Returns ``(chol_z, q_mu, q_sqrt, elbo)``; ``elbo`` is Titsias' bound
    ``log N(y | mu, Q + W^-1) - tr(W (K - Q)) / 2``.
    """
    chol_z = _kzz_chol(program, theta, z)
    m = z.shape[0]
    mu0 = program.mean_value(theta)

    def chunk(carry: tuple[Array, ...], args: tuple[Array, Array, Array]) -> tuple[tuple[Array, ...], None]:
        lam, b, s_yy, s_logd, s_tr, count = carry
        xc, yc, mc = args
        a = jax.scipy.linalg.solve_triangular(chol_z, program.kernel.gram(theta, z, xc, same=False),
                                              lower=True)
        d = _noise_var(program, theta, xc)
        w = mc / d
        r = yc - mu0
        resid_var = program.kernel.gram_diag(theta, xc, white=False) - jnp.sum(a * a, 0)
        return (lam + (a * w) @ a.T, b + a @ (w * r), s_yy + jnp.sum(w * r * r),
                s_logd + jnp.sum(mc * jnp.log(d)), s_tr + jnp.sum(w * resid_var), count + jnp.sum(mc)), None

    zero = jnp.zeros((), dtype=z.dtype)
    init = (jnp.eye(m, dtype=z.dtype), jnp.zeros(m, dtype=z.dtype), zero, zero, zero, zero)
    (lam, b, s_yy, s_logd, s_tr, count), _ = jax.lax.scan(chunk, init, (x, y, mask))
    chol_lam = jnp.linalg.cholesky(lam)
    q_mu = jax.scipy.linalg.cho_solve((chol_lam, True), b)
    # Lambda^-1 = L^-T L^-1, so S = L^-T is a square root of the covariance.
    q_sqrt = jax.scipy.linalg.solve_triangular(chol_lam, jnp.eye(m, dtype=z.dtype), lower=True).T
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol_lam))) + s_logd
    elbo = -0.5 * (count * jnp.log(2 * jnp.pi) + logdet + s_yy - b @ q_mu + s_tr)
    return chol_z, q_mu, q_sqrt, elbo


def _chunked(a: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    n = a.shape[0]
    c = max(1, math.ceil(n / size))
    k = math.ceil(n / c)
    pad = c * k - n
    mask = np.concatenate([np.ones(n), np.zeros(pad)]).reshape(c, k)
    a = np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a
    return a.reshape(c, k, *a.shape[1:]), mask


def _optimal_q(program: GPProgram) -> Any:
    program = program.anonymous()  # feature names do not change the computation

    def build() -> Any:
        def run(theta: Any, z: Array, x: Array, y: Array, mask: Array) -> Any:
            count_trace("gp/svgp_optimal_q")
            return map_unbatched(lambda th, zz, yy: _optimal_q_one(program, th, zz, x, yy, mask),
                                         theta, z, jnp.moveaxis(y, 2, 0))

        return jax.jit(run)

    return cached_program(("gp/svgp_optimal_q", program), build)


def _initial_hyperparameters(program: GPProgram, prep: Prepared, key: PRNGKeyArray, init: str
                             ) -> dict[str, np.ndarray]:
    """Unconstrained starting hyperparameters ``{site: [O, ...]}``."""
    k_pick, k_fit = jax.random.split(key)
    if init == "prior":
        return initial_unconstrained(program, k_fit, prep.num_outputs, strategy="median")
    if init != "subset":
        raise ValueError(f"init must be 'subset' or 'prior', got {init!r}")
    n_sub = min(prep.n, SUBSET_INIT)
    idx = np.sort(np.asarray(jax.random.choice(k_pick, prep.n, (n_sub,), replace=False)))
    sub = dataclasses.replace(prep, x=prep.x[idx], y=prep.y[idx], raw_x=prep.raw_x[idx], raw_y=prep.raw_y[idx])
    result = fit_map(program, sub, MapInference(method="map", steps=60), key=k_fit)
    objective = map_objective(program, prep.num_outputs)
    return {k: np.asarray(v) for k, v in objective.unravel(jnp.asarray(result.u_flat)).items()}


class SparseGPState(eqx.Module):
    """Arrays of a fitted SVGP (model units; ``theta`` leaves ``[O, ...]``)."""

    program: GPProgram = eqx.field(static=True)
    columns: tuple[int, ...] = eqx.field(static=True)
    theta: dict[str, Array]
    z: Float[Array, "O M Dm"]
    chol_z: Float[Array, "O M M"]
    q_mu: Float[Array, "O M"]
    q_sqrt: Float[Array, "O M M"]
    low: Float[Array, " Dm"]
    scale: Float[Array, " Dm"]
    y_mean: Float[Array, " O"]
    y_scale: Float[Array, " O"]


@jax.jit
def _sparse_moments(state: SparseGPState, x: Array) -> tuple[Array, Array, Array]:
    """Latent mean, latent variance, noise variance ``[M, O]`` in raw units."""
    count_trace("gp/svgp_predict")
    xs = (jnp.asarray(x, dtype=state.z.dtype)[:, jnp.asarray(state.columns)] - state.low) / state.scale
    program = state.program

    def one(theta: Any, z: Array, chol_z: Array, q_mu: Array, q_sqrt: Array) -> tuple[Array, Array, Array]:
        mean, var = _marginals(program, theta, z, chol_z, q_mu, q_sqrt, xs)
        return mean, var, _noise_var(program, theta, xs)

    out = map_unbatched(one, state.theta, state.z, state.chol_z, state.q_mu, state.q_sqrt)
    mean, var, noise = (a.T for a in out)
    return mean * state.y_scale + state.y_mean, var * state.y_scale**2, noise * state.y_scale**2


@functools.partial(jax.jit, static_argnames=("n", "per_block"))
def _sparse_draw_params(state: SparseGPState, key: PRNGKeyArray, n: int, per_block: int) -> dict[str, Any]:
    count_trace("gp/svgp_draws")
    kernel = state.program.kernel
    feats = kernel.num_features(per_block)
    keys = jax.random.split(key, (n, state.z.shape[0]))

    def prior_part(theta: Any, z: Array, chol_z: Array, q_mu: Array, q_sqrt: Array, k: PRNGKeyArray) -> dict[str, Any]:
        kf, kw, ku = jax.random.split(k, 3)
        fparams = kernel.sample_features(theta, kf, per_block)
        w = jax.random.normal(kw, (feats,), dtype=z.dtype)
        f_z = kernel.eval_features(theta, fparams, z, per_block) @ w
        u = chol_z @ (q_mu + q_sqrt @ jax.random.normal(ku, q_mu.shape, dtype=z.dtype))
        resid = u - state.program.mean_value(theta) - f_z
        return {"theta": theta, "features": fparams, "w": w, "resid": resid}

    parts = jax.vmap(lambda k: jax.vmap(prior_part)(state.theta, state.z, state.chol_z, state.q_mu, state.q_sqrt,
                                                    k))(keys)
    resid = parts.pop("resid")  # [n, O, M]
    v = map_unbatched(lambda c, r: jax.scipy.linalg.cho_solve((c, True), r.T).T, state.chol_z,
                              jnp.swapaxes(resid, 0, 1))
    parts["v"] = jnp.swapaxes(v, 0, 1)
    return parts


class SparseGPPosterior(eqx.Module):
    """A fitted SVGP; a :class:`~priorguard.models.base.Posterior`."""

    state: SparseGPState
    prep: Prepared = eqx.field(static=True)
    record: FitRecord = eqx.field(static=True)

    @property
    def input_dim(self) -> int:
        return self.prep.input_dim

    @property
    def output_dim(self) -> int:
        return self.prep.num_outputs

    @property
    def program(self) -> GPProgram:
        return self.state.program

    @property
    def jitter(self) -> float:
        """Relative jitter on the inducing covariance (fixed, :data:`INDUCING_JITTER`)."""
        return INDUCING_JITTER

    def predict(self, x: Float[Array, "M D"]) -> Prediction:
        """Predictive moments ``[M, O]`` at raw inputs ``x [M, D]``."""
        mean, var, noise = _sparse_moments(self.state, x)
        return Prediction(mean=mean, epistemic_var=var, aleatoric_var=noise)

    def log_predictive_density(self, x: Float[Array, "M D"], y: Float[Array, "M O"]) -> Float[Array, " M"]:
        mean, var, noise = _sparse_moments(self.state, x)
        y = jnp.asarray(y, dtype=mean.dtype).reshape(mean.shape)
        return mixture_log_density(jnp.zeros(1), mean[None], (var + noise)[None], y)

    def sample_functions(self, key: PRNGKeyArray, n: int, *, num_features: int = 512) -> FunctionDraws:
        """``n`` pathwise draws from the SVGP posterior (``u ~ q``)."""
        st = self.state
        params = _sparse_draw_params(st, key, n, num_features)
        params["basis"] = basis_params(n, st.z, st.low, st.scale, st.y_mean, st.y_scale)
        return FunctionDraws(params=params, apply_fn=ExactDrawFn(st.program.anonymous(), num_features, st.columns))

    def map_hyperparameters(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.state.theta.items()}

    def to_datatree(self, *, ppc_draws: int = 100) -> Any:
        """ArviZ DataTree: ``posterior`` (hyperparameters), ``sample_stats`` (``lp``: collapsed
        ELBO plus log prior), ``observed_data``, ``constant_data``, ``log_likelihood`` and
        ``posterior_predictive``, over ``chain = 1`` and ``draw = S`` (``ppc_draws``, fewer when
        ``S * N * O`` would pass 1e7).

        The draws are of the latent function under the variational posterior ``q``, at
        the fitted hyperparameters: draw ``s`` holds ``f_s(x_i)`` from ``q``'s marginal at
        each training input (independent across inputs: PSIS-LOO and LOO-PIT read each
        input alone), ``log_likelihood`` is ``log N(y_i | f_s(x_i), noise^2)`` per
        observation and output (observed_data's dims; raw units) and
        ``posterior_predictive`` is ``f_s(x_i)`` plus noise, so ``az.loo``, ``az.compare``
        and ``az.loo_pit`` run on it. The hyperparameters and ``lp`` are point estimates,
        the same at every draw."""
        import xarray as xr

        prep, record = self.prep, self.record
        prefix = self.state.program.site_prefix
        x = jnp.asarray(prep.raw_x)
        mean, var, noise = (np.asarray(a) for a in _sparse_moments(self.state, x))
        draws = max(1, min(ppc_draws, int(1e7 // max(1, mean.size))))
        k_f, k_y = jax.random.split(jax.random.key(0) if record.key is None else record.key)
        f = mean + np.sqrt(var) * np.asarray(jax.random.normal(k_f, (draws, *mean.shape), jnp.float64))
        sd = np.sqrt(noise)
        ll = -0.5 * (np.log(2 * np.pi * sd**2) + ((prep.raw_y - f) / sd) ** 2)  # [S, N, O]
        y_rep = f + sd * np.asarray(jax.random.normal(k_y, f.shape, jnp.float64))
        repeat = lambda v: np.repeat(np.asarray(v), draws, axis=1)  # noqa: E731 - [1, 1, ...] -> [1, S, ...]
        groups = {"posterior": posterior_dataset(self.state.program, {k: repeat(v) for k, v in record.samples.items()},
                                                 prep.output_names),
                  "sample_stats": xr.Dataset({"lp": (["chain", "draw"], repeat(record.log_joint))},
                                             coords={"chain": [0], "draw": np.arange(draws)})}
        groups.update(observation_groups(prep, prefix, ll[None], y_rep[None]))
        groups["prior"] = prior_dataset(self.state.program, prep.output_names, jax.random.fold_in(k_f, 2), ppc_draws)
        prior_pred = prior_predictive_dataset(self.state.program, prep, groups["prior"], jax.random.fold_in(k_f, 3))
        if prior_pred is not None:  # not above PRIOR_PREDICTIVE_MAX_INPUTS distinct inputs
            groups["prior_predictive"] = prior_pred
        dt = xr.DataTree.from_dict(groups)
        dt.attrs.update({"model": "svgp", "inference": "map", "site_prefix": prefix, "posterior_draws":
                         "latent function under q, marginal per training input; hyperparameters fixed",
                         "kernel": self.state.program.describe(), "inducing": int(self.state.z.shape[1]),
                         "noise_floor": self.state.program.noise_floor})
        return dt


def fit_sparse_gp(
    kernel: Any,
    data: Data,
    *,
    key: PRNGKeyArray,
    sparse: SparseSpec | None = None,
    noise: Any = None,
    mean: str = "zero",
    feature_names: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    feature_ranges: Any = None,
    standardize: bool = True,
    site_prefix: str = "terminal",
    output_names: Sequence[str] | None = None,
    init: str = "subset",
    prior_mean: float | None = None,
    noise_floor: float = NOISE_FLOOR,
) -> SparseGPPosterior:
    """Fits a sparse variational GP (see the module docstring).

    Args:
        kernel: fixed kernel spec.
        data: ``x [N, D]``, ``y [N, O]`` (raw units).
        key: consumed (inducing-point choice, starting point, minibatches).
        sparse: inducing points ``M``, batch size ``B``, Adam ``steps`` and learning rate.
        noise, mean, feature_names, features, feature_ranges, standardize,
            site_prefix, output_names, prior_mean, noise_floor: as in :func:`~priorguard.models.gp.exact.fit_exact_gp`.
        init: where hyperparameters start: ``"subset"`` (the MAP of an exact GP
            on :data:`SUBSET_INIT` random points, 60 L-BFGS steps) or
            ``"prior"`` (the prior median).

    Returns:
        A :class:`SparseGPPosterior`.
    """
    sparse = sparse if sparse is not None else SparseSpec()
    prep = prepare_data(data, feature_names=feature_names, features=features, feature_ranges=feature_ranges,
                        standardize=standardize, output_names=output_names, prior_mean=prior_mean)
    program = compile_program(as_kernel_spec(kernel), noise=noise, mean=mean,
                                      feature_names=prep.feature_names, site_prefix=site_prefix, zero_at=prep.zero_at,
                                      noise_floor=noise_floor)
    o, n = prep.num_outputs, prep.n
    m = min(sparse.inducing, n)
    spec = sparse.model_copy(update={"inducing": m, "batch_size": min(sparse.batch_size, n)})
    anonymous = program.anonymous()  # feature names do not change the computation
    trainer = cached_program(("gp/svgp", anonymous, o, spec.batch_size, spec.steps, spec.learning_rate),
                             lambda: SvgpTrainer(anonymous, o, spec))
    k_z, k_init, k_train = jax.random.split(key, 3)
    pick = np.asarray(jax.random.choice(k_z, n, (m,), replace=False))
    z0 = np.broadcast_to(prep.x[pick], (o, m, prep.x.shape[1])).copy()
    u0 = _initial_hyperparameters(program, prep, k_init, init)
    params0 = {"u": {k: jnp.asarray(v) for k, v in u0.items()}, "z": jnp.asarray(z0)}
    x, y = jnp.asarray(prep.x), jnp.asarray(prep.y)
    params, _, _, losses = trainer.train(params0, k_train, x, y)
    values = trainer.constrain(params["u"]) if params["u"] else {}
    theta = theta_from_sites(program, values, (o,))
    xc, mask = _chunked(prep.x, CHUNK)
    yc, _ = _chunked(prep.y, CHUNK)
    chol_z, q_mu, q_sqrt, elbo = _optimal_q(program)(theta, params["z"], jnp.asarray(xc), jnp.asarray(yc),
                                                    jnp.asarray(mask))
    if not (bool(jnp.all(jnp.isfinite(chol_z))) and bool(jnp.all(jnp.isfinite(q_mu)))):
        raise GPNumericalError(
            f"the inducing covariance of {program.describe()} did not factorise (hyperparameters"
            f" {({k: np.asarray(v).round(6).tolist() for k, v in theta.items()})})")
    state = SparseGPState(
        program=program, columns=prep.columns, theta=theta, z=params["z"], chol_z=chol_z, q_mu=q_mu,
        q_sqrt=q_sqrt, low=jnp.asarray(prep.low), scale=jnp.asarray(prep.scale),
        y_mean=jnp.asarray(prep.y_mean), y_scale=jnp.asarray(prep.y_scale),
    )
    log_prior = float(trainer.log_prior(params["u"])) if params["u"] else 0.0
    record = FitRecord(
        method="svgp",
        samples={k: np.asarray(v)[None, None] for k, v in values.items()},
        log_joint=np.asarray([[float(jnp.sum(elbo)) + log_prior]]),
        optimizer={"losses": np.asarray(losses), "steps": spec.steps, "batch_size": spec.batch_size,
                   "inducing": m, "elbo": np.asarray(elbo), "init": init},
        key=jax.random.fold_in(key, PREDICTIVE_STREAM),  # the DataTree's draws, from the fit's key
    )
    return SparseGPPosterior(state=state, prep=prep, record=record)

