"""Compiled numpyro runners that a second fit of the same shapes reuses.

``MCMC.run`` and ``svi.run`` build fresh closures, so every call compiles
again. The programs here are built once per *model structure* (the caller keys
them, see :func:`priorguard._compile.cached_program`) and take the data as
traced arguments, so a later fit whose arrays have the same shapes and dtypes
hits JAX's jit cache and compiles nothing. Every traced body calls
:func:`priorguard._compile.count_trace`; tests read
:data:`priorguard._compile.TRACE_COUNTS` to prove a second fit traced nothing.

Programs (the model is ``model(x, y)`` with ``y [N, O]`` observed):
    :class:`NutsProgram`: NUTS exactly as numpyro's ``MCMC(NUTS(model))`` runs it
        (``initialize_model`` with ``init_to_uniform``, diagonal mass matrix,
        dual averaging), one chain per key, chains mapped with ``pmap`` when
        there are enough devices, else one after another.
    :class:`SviProgram`: numpyro ``SVI`` with ``AutoDiagonalNormal`` or
        ``AutoLowRankMultivariateNormal`` and Adam, stepped in a ``lax.scan``.
    :class:`ModeProgram`: posterior modes in unconstrained space (L-BFGS or
        Adam), vmapped over starting points (MAP restarts, ensemble members).

The Laplace approximation of the evidence at a mode is in
:mod:`priorguard.models.evidence`.

Parallel chains need ``numpyro.set_host_device_count(n)`` (or ``XLA_FLAGS=
--xla_force_host_platform_device_count=n``) *before JAX starts*; the priorguard
CLI does it at start-up. Without it chains run one after another.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to
from numpyro.handlers import seed, trace
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoLowRankMultivariateNormal
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, initialize_model, potential_energy

from priorguard._compile import count_trace

__all__ = [
    "ModeProgram",
    "NutsProgram",
    "SamplingWarning",
    "SviProgram",
    "make_constrain",
    "uniform_unconstrained",
    "warn_on_diagnostics",
]

Model = Callable[..., Any]


def uniform_unconstrained(model: Model, key: jax.Array, num: int, *args: Any,
                          radius: float = 2.0) -> dict[str, jax.Array]:
    """``num`` starting points, uniform in ``[-radius, radius]`` in unconstrained space.

    This is numpyro's ``init_to_uniform`` for a batch (traces the model once).
    """
    tr = trace(seed(model, key)).get_trace(*args)
    names = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    keys = jax.random.split(key, max(len(names), 1))
    out = {}
    for k, name in zip(keys, names):
        site = tr[name]
        shape = jnp.shape(biject_to(site["fn"].support).inv(site["value"]))
        out[name] = jax.random.uniform(k, (num, *shape), minval=-radius, maxval=radius)
    return out


# --- NUTS -----------------------------------------------------------------------


class NutsProgram:
    """NUTS with numpyro's kernels and numpyro's initialisation, compiled once.

    ``run(key, x, y)`` splits ``key`` into one key per chain the way
    ``MCMC.run`` does, so with the same model and key it draws the same chains
    as ``MCMC(NUTS(model), ...)`` (up to floating-point reassociation).

    Returns a dict with ``samples`` (constrained latent and deterministic sites,
    ``[C, S, ...]``), ``stats`` (``diverging``, ``num_steps``, ``energy``,
    ``potential_energy``, ``accept_prob``; ``[C, S]``), ``step_size [C]``,
    ``best_z`` (the unconstrained draw with the lowest potential per chain,
    leaves ``[C, ...]``) and ``best_potential [C]``.
    """

    def __init__(self, model: Model, *, warmup: int, samples: int, chains: int,
                 target_accept: float, max_tree_depth: int, name: str = "nuts") -> None:
        self.model = model
        self.warmup = warmup
        self.samples = samples
        self.chains = chains
        self.target_accept = target_accept
        self.max_tree_depth = max_tree_depth
        self.name = name
        self.chain_method = "parallel" if chains > 1 and jax.local_device_count() >= chains else "sequential"
        if self.chain_method == "parallel":
            self._run_chains = jax.pmap(self._one_chain, in_axes=(0, None, None))
        else:
            self._run_one = jax.jit(self._one_chain)

    def _one_chain(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict[str, Any]:
        count_trace(self.name)
        model = self.model
        key_hmc, key_init = jax.random.split(key)
        info = initialize_model(key_init, model, model_args=(x, y), dynamic_args=True)
        init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")
        state = init_kernel(
            info.param_info,
            self.warmup,
            dense_mass=[],  # what NUTS(model) hands the kernel: a diagonal mass matrix, per site
            target_accept_prob=self.target_accept,
            trajectory_length=None,
            max_tree_depth=self.max_tree_depth,
            model_args=(x, y),
            rng_key=key_hmc,
        )

        def warm(s: Any, _: Any) -> tuple[Any, None]:
            return sample_kernel(s, model_args=(x, y)), None

        state, _ = jax.lax.scan(warm, state, None, length=self.warmup)

        def draw(s: Any, _: Any) -> tuple[Any, Any]:
            s = sample_kernel(s, model_args=(x, y))
            return s, (s.z, s.diverging, s.num_steps, s.energy, s.potential_energy, s.accept_prob)

        state, (zs, div, steps, energy, pe, acc) = jax.lax.scan(draw, state, None, length=self.samples)
        constrained = constrain_fn(model, (x, y), {}, zs, return_deterministic=True, batch_ndims=1)
        constrained = {k: v for k, v in constrained.items() if k in _latent_names(model, x, y)}
        best = jnp.argmin(pe)
        return {
            "samples": constrained,
            "stats": {"diverging": div, "num_steps": steps, "energy": energy,
                      "potential_energy": pe, "accept_prob": acc},
            "step_size": state.adapt_state.step_size,
            "best_z": jax.tree_util.tree_map(lambda v: v[best], zs),
            "best_potential": pe[best],
        }

    def run(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict[str, Any]:
        keys = jax.random.split(key, self.chains) if self.chains > 1 else key[None]
        if self.chain_method == "parallel":
            out = self._run_chains(keys, x, y)
        else:
            per_chain = [self._run_one(k, x, y) for k in keys]
            out = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *per_chain)
        return out


def _latent_names(model: Model, x: jax.Array, y: jax.Array) -> set[str]:
    tr = trace(seed(model, rng_seed=0)).get_trace(x, y)
    return {n for n, s in tr.items()
            if (s["type"] == "sample" and not s["is_observed"]) or s["type"] == "deterministic"}


# --- SVI ------------------------------------------------------------------------


class SviProgram:
    """SVI (Trace_ELBO, Adam) with an autoguide, stepped in one compiled ``lax.scan``.

    ``run(key, x, y, want_elbo=)`` returns ``samples`` (``[S, ...]``
    constrained latent and deterministic sites drawn from the fitted guide),
    ``losses [steps]``, the guide ``params`` and, when asked, ``elbo`` (a
    ``particles``-sample estimate at the fitted guide). Guide locations start
    uniform in ``[-2, 2]`` (unconstrained) from ``key``, numpyro's default
    ``init_to_uniform``.

    The autoguide and its ``SVI`` object are built *inside* the traced
    function, so the guide's prototype (a trace of the model) is taken by the
    compiler along with everything else: nothing runs op by op, and no tracer
    outlives the trace that made it.
    """

    def __init__(self, model: Model, *, guide: str, learning_rate: float, steps: int,
                 samples: int, particles: int = 64, name: str = "svi") -> None:
        if guide not in ("normal", "lowrank"):
            raise ValueError(f"guide must be 'normal' or 'lowrank', got {guide!r}")
        self.model = model
        self.guide_kind = guide
        self.learning_rate = learning_rate
        self.steps = steps
        self.samples = samples
        self.particles = particles
        self.name = name
        self._run = jax.jit(self._fit, static_argnums=3)

    def _guide(self) -> Any:
        # Mean-field normal as one packed vector (AutoDiagonalNormal), not one loc/scale
        # pair per site (AutoNormal): the same family and initialisation, and a program
        # with one guide density and one Adam state, which compiles in about half the
        # time (a horseshoe BNN's: 10.4 s -> 4.8 s) and loads from the cache faster.
        cls = AutoDiagonalNormal if self.guide_kind == "normal" else AutoLowRankMultivariateNormal
        return cls(self.model)

    def _fit(self, key: jax.Array, x: jax.Array, y: jax.Array, want_elbo: bool) -> dict[str, Any]:
        count_trace(self.name)
        key_init, key_draw, key_elbo = jax.random.split(key, 3)
        guide = self._guide()
        svi = SVI(self.model, guide, numpyro.optim.Adam(self.learning_rate), Trace_ELBO())
        state = svi.init(key_init, x, y)

        def step(s: Any, _: Any) -> tuple[Any, jax.Array]:
            return svi.update(s, x, y)

        state, losses = jax.lax.scan(step, state, None, length=self.steps)
        params = svi.get_params(state)
        # sample_posterior returns latent and deterministic sites, constrained.
        draws = guide.sample_posterior(key_draw, params, sample_shape=(self.samples,))
        names = _latent_names(self.model, x, y)
        draws = {k: v for k, v in draws.items() if k in names}
        out = {"samples": draws, "losses": losses, "params": params}
        if want_elbo:
            out["elbo"] = -Trace_ELBO(num_particles=self.particles, vectorize_particles=True).loss(
                key_elbo, params, self.model, guide, x, y)
        return out

    def run(self, key: jax.Array, x: jax.Array, y: jax.Array, *, want_elbo: bool = True) -> dict[str, Any]:
        return self._run(key, x, y, want_elbo)


# --- modes ----------------------------------------------------------------------


class ModeProgram:
    """Minimises the potential energy (negative log joint in unconstrained space).

    ``from_key(key, x, y, num)`` starts ``num`` runs uniformly in ``[-2, 2]``;
    ``from_points(z0, x, y)`` starts from given unconstrained points (leaves
    ``[R, ...]``). Both return ``(z [R, ...], potential [R])``.
    """

    def __init__(self, model: Model, *, optimizer: str, steps: int, learning_rate: float,
                 name: str = "mode") -> None:
        self.model = model
        self.optimizer = optimizer
        self.steps = steps
        self.learning_rate = learning_rate
        self.name = name
        self._from_key = jax.jit(self._run_from_key, static_argnums=3)
        self._from_points = jax.jit(self._run_from_points)

    def _optimise(self, z0: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
        flat0, unravel = ravel_pytree(z0)

        def objective(flat: jax.Array) -> jax.Array:
            u = potential_energy(self.model, (x, y), {}, unravel(flat))
            return jnp.where(jnp.isfinite(u), u, jnp.asarray(1e30, u.dtype))

        if self.optimizer == "lbfgs":
            opt = optax.lbfgs()
            value_and_grad = optax.value_and_grad_from_state(objective)

            def step(carry: Any, _: Any) -> tuple[Any, jax.Array]:
                flat, state = carry
                value, grad = value_and_grad(flat, state=state)
                updates, state = opt.update(grad, state, flat, value=value, grad=grad,
                                            value_fn=objective)
                return (optax.apply_updates(flat, updates), state), value
        else:
            opt = optax.adam(self.learning_rate)
            value_and_grad = jax.value_and_grad(objective)

            def step(carry: Any, _: Any) -> tuple[Any, jax.Array]:
                flat, state = carry
                value, grad = value_and_grad(flat)
                updates, state = opt.update(grad, state, flat)
                return (optax.apply_updates(flat, updates), state), value

        (flat, _), _ = jax.lax.scan(step, (flat0, opt.init(flat0)), None, length=self.steps)
        return unravel(flat), objective(flat)

    def _run_from_points(self, z0: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> Any:
        count_trace(self.name)
        return jax.vmap(self._optimise, in_axes=(0, None, None))(z0, x, y)

    def _run_from_key(self, key: jax.Array, x: jax.Array, y: jax.Array, num: int) -> Any:
        count_trace(self.name)
        z0 = uniform_unconstrained(self.model, key, num, x, y)
        return jax.vmap(self._optimise, in_axes=(0, None, None))(z0, x, y)

    def from_key(self, key: jax.Array, x: jax.Array, y: jax.Array, num: int) -> Any:
        return self._from_key(key, x, y, num)

    def from_points(self, z0: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> Any:
        return self._from_points(z0, x, y)


def make_constrain(model: Model, name: str) -> Callable[..., dict[str, jax.Array]]:
    """A jitted ``(z [R, ...], x, y) -> sites [R, ...]``: unconstrained points to
    constrained latent and deterministic sites."""

    def run(z: Any, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        count_trace(name + "/constrain")
        out = constrain_fn(model, (x, y), {}, z, return_deterministic=True, batch_ndims=1)
        names = _latent_names(model, x, y)
        return {k: v for k, v in out.items() if k in names}

    return jax.jit(run)


# --- diagnostics ----------------------------------------------------------------


class SamplingWarning(UserWarning):
    """A sampler diagnostic (divergences, R-hat, ESS) flags a problem."""


def warn_on_diagnostics(posterior: Any, diverging: np.ndarray, *, stacklevel: int = 3) -> dict[str, float]:
    """Emits PyMC's warnings for divergences, R-hat and ESS; returns the figures.

    Args:
        posterior: an ``xarray.Dataset`` with ``chain`` and ``draw`` dims.
        diverging: ``[C, S]`` post-warmup divergence flags.
    """
    import arviz as az

    chains = int(diverging.shape[0])
    n_div = int(np.sum(diverging))
    figures: dict[str, float] = {"divergences": float(n_div)}
    if n_div > 0:
        warnings.warn(
            f"There were {n_div} divergences after tuning. Increase `target_accept` or reparameterize.",
            SamplingWarning, stacklevel=stacklevel)
    ess = az.ess(posterior, method="bulk")
    min_ess = float(np.nanmin([np.nanmin(np.asarray(v)) for v in ess.data_vars.values()]))
    figures["min_ess_bulk"] = min_ess
    if chains > 1:
        rhat = az.rhat(posterior)
        max_rhat = float(np.nanmax([np.nanmax(np.asarray(v)) for v in rhat.data_vars.values()]))
        figures["max_rhat"] = max_rhat
        if max_rhat > 1.01:
            warnings.warn(
                "The rhat statistic is larger than 1.01 for some parameters. This indicates problems"
                " during sampling.", SamplingWarning, stacklevel=stacklevel)
    if min_ess / chains < 100:
        warnings.warn("The effective sample size per chain is smaller than 100 for some parameters.",
                      SamplingWarning, stacklevel=stacklevel)
    return figures
