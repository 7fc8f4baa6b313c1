"""I, the instrumental value model: its targets (Monte-Carlo returns through W, fitted value
iteration, or the logged returns), its fit, and its calibration against the true environment.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from priorguard._compile import shape_bucket
from priorguard.analysis.diagnostics import interval_coverage
from priorguard.experiments.context import Progress, RunContext
from priorguard.experiments.data import Transitions, data_returns, subsample
from priorguard.models.base import Posterior, as_data
from priorguard.models.roles import fit_role, role_inputs
from priorguard.planners.worlds import PlanningModels

# the fits of fitted value iteration (round k folds in FVI_STREAM + k)
FVI_STREAM = 0xF710
# the true environment's rollouts that I's coverage is scored against
TRUE_I_STREAM = 0x7A1E


def fit_instrumental(ctx: RunContext, models: PlanningModels, proposal: Any, params: Any, data: Transitions,
                     train_states: np.ndarray, key_targets: Any, key_fit: Any) -> Posterior:
    """Fits I on the targets the spec names (``instrumental.targets``), at train-split states.

    Args:
        models: T, W (and D) without I.
        proposal, params: A.
        data: the fit episodes (for ``"data_returns"``).
        train_states: every visited state with a rater label ``[M, F]``.
        key_targets: consumed by the targets' rollouts.
        key_fit: I's fit stream.
    """
    spec, ispec = ctx.spec, ctx.spec.instrumental
    icols = role_inputs(ispec, ctx.features)
    states = train_states
    idx = subsample(len(states), spec.data.max_points, jax.random.fold_in(key_fit, 1))
    starts = jnp.asarray(states[idx], jnp.float64)

    def fit_i(x: np.ndarray, targets: np.ndarray, key: Any) -> Posterior:
        return fit_role(ispec, as_data(x[:, icols], targets), key=key, role="instrumental",
                        feature_names=[ctx.features[c] for c in icols],
                        feature_ranges=[ctx.ranges[c] for c in icols])

    if ispec.targets == "data_returns":
        x_d, y_d = data_returns(data, horizon=ispec.horizon, discount=ispec.discount)
        keep = subsample(len(x_d), spec.data.max_points, jax.random.fold_in(key_fit, 3))
        return fit_i(x_d[keep], y_d[keep], key_fit)
    if ispec.targets == "fvi":
        return fitted_value_iteration(
            models, proposal, params, key_targets, starts,
            fit=lambda y, it: fit_i(states[idx], y, jax.random.fold_in(key_fit, FVI_STREAM + it)),
            columns=icols, iterations=ispec.horizon, discount=ispec.discount,
            rollouts=ispec.rollouts, progress=ctx.progress)
    targets = np.asarray(mc_returns(models, proposal, params, key_targets, starts, horizon=ispec.horizon,
                                    discount=ispec.discount, rollouts=ispec.rollouts))
    return fit_i(states[idx], targets, key_fit)


def instrumental_scores(ctx: RunContext, posterior: Posterior, proposal: Any, params: Any,
                        evaluations: dict[str, dict[str, Any]], key: Any) -> dict[str, float]:
    """Coverage of I's 50/90% intervals at the states met on each split, against what I estimates
    computed in the true environment (:func:`true_instrumental_values`).

    A source without a model of its dynamics has no true values: the coverages are n/a
    (``None``, with ``instrumental_coverage_na`` saying why).
    """
    ispec, out = ctx.spec.instrumental, {}
    if "model" in ctx.source.unavailable:
        for split in evaluations:
            for level in (50, 90):
                out[f"instrumental_coverage{level}_{split}"] = None
        out["instrumental_coverage_na"] = ctx.source.unavailable["model"]
        return out
    icols = np.asarray(role_inputs(ispec, ctx.features))
    for split, ev in evaluations.items():
        if len(ev["states"]) == 0:
            continue
        truth = np.asarray(true_instrumental_values(
            ctx.source.model(split), proposal, params, jax.random.fold_in(key, len(out)), ev["true_states"],
            horizon=ispec.horizon, discount=ispec.discount, rollouts=ispec.rollouts))
        pred = posterior.predict(jnp.asarray(ev["states"][:, icols], jnp.float64))
        for level in (0.5, 0.9):
            out[f"instrumental_coverage{int(level * 100)}_{split}"] = interval_coverage(
                truth, np.asarray(pred.mean[:, 0]), np.asarray(pred.total_var[:, 0]), level=level)
    return out


def mc_returns(models: PlanningModels, proposal: Any, params: Any, key: Any, starts: Any, *, horizon: int,
               discount: float, rollouts: int) -> Any:
    """Monte-Carlo targets for I: mean over rollouts of sum_t discount^(t-1) c_t T(s_t) along W under A.

    Rollout r follows world ``r mod S`` (W, T and D draws of one world together);
    ``c_t`` is that world's probability that the episode has not ended before
    ``s_t`` (the product of D's continuations of ``s_1 .. s_{t-1}``; 1 without D).

    Returns:
        ``[N]`` targets.
    """
    return _mc_returns(models, proposal, params, key, starts, horizon, discount, rollouts)



@eqx.filter_jit
def _mc_returns(models: PlanningModels, proposal: Any, params: Any, key: Any, starts: Any, horizon: int,
                discount: float, rollouts: int) -> Any:
    def one(world, key):
        def step(carry, k):
            obs, total, disc = carry
            action = proposal.sample(params, k, obs, 1)[:, 0]
            nxt = models.next_state(obs, action, world)
            total = total + disc * models.terminal_value(nxt, world)
            return (nxt, total, disc * discount * models.continuation(nxt, world)), None

        init = (starts, jnp.zeros(starts.shape[0], starts.dtype), jnp.ones(starts.shape[0], starts.dtype))
        (_, total, _), _ = jax.lax.scan(step, init, jax.random.split(key, horizon))
        return total

    worlds = jnp.arange(rollouts) % models.num_worlds
    return jnp.mean(jax.vmap(one)(worlds, jax.random.split(key, rollouts)), axis=0)


def fitted_value_iteration(models: PlanningModels, proposal: Any, params: Any, key: Any, starts: Any, *,
                           fit: Callable[[np.ndarray, int], Posterior], columns: Any, iterations: int,
                           discount: float, rollouts: int, progress: Progress | None = None) -> Posterior:
    """I by fitted value iteration: ``I_k(s) = E[T(s') + discount * c(s') * I_{k-1}(s')]``, ``I_0 = 0``.

    The expectation is over A's action and W's next state ``s'`` from each start,
    rollout r in world ``r mod S`` (its T and D too; ``c`` is D's continuation, 1
    without D), estimated once from ``rollouts`` samples per start; ``I_{k-1}``
    is the previous fit's posterior mean. After ``iterations`` rounds I looks
    as far ahead as Monte-Carlo targets over that horizon, but each round
    regresses on one-step backups, which generalise across states instead of
    following long rollouts through W.

    Args:
        fit: ``(targets [N], iteration) -> Posterior`` over the starts' inputs.
        columns: the feature columns I reads.

    Returns:
        The last round's posterior.
    """
    nxt, value, cont = _one_step_backups(models, proposal, params, key, starts, rollouts)
    nxt, value, cont = np.asarray(nxt), np.asarray(value), np.asarray(cont)
    r, n = value.shape
    flat = jnp.asarray(nxt.reshape(r * n, -1)[:, np.asarray(columns)], jnp.float64)
    later = np.zeros((r, n))
    posterior = None
    for it in range(iterations):
        if progress is not None:
            progress(f"fit I (fitted value iteration {it + 1}/{iterations})")
        posterior = fit(np.mean(value + discount * cont * later, axis=0), it)
        if it + 1 < iterations:
            later = np.asarray(posterior.predict(flat).mean[:, 0]).reshape(r, n)
    return posterior


@eqx.filter_jit
def _one_step_backups(models: PlanningModels, proposal: Any, params: Any, key: Any, starts: Any,
                      rollouts: int) -> tuple[Any, Any, Any]:
    """``(next states [R, N, F], T there [R, N], D's continuation there [R, N])``; rollout r in world r mod S."""
    def one(world, key):
        action = proposal.sample(params, key, starts, 1)[:, 0]
        nxt = models.next_state(starts, action, world)
        return nxt, models.terminal_value(nxt, world), models.continuation(nxt, world)

    worlds = jnp.arange(rollouts) % models.num_worlds
    return jax.vmap(one)(worlds, jax.random.split(key, rollouts))


def true_instrumental_values(model: Any, proposal: Any, params: Any, key: Any, states: Any, *,
                             horizon: int, discount: float, rollouts: int) -> Any:
    """What I estimates, in the true environment: the mean over rollouts of
    ``sum_t discount^(t-1) c_t r(s_t)`` under A for ``horizon`` steps from each hidden state.

    ``r`` is the rater's value (T's labels, so I's truth is what I would be with
    T, W and D exact) and ``c_t`` is 1 until the episode has ended. Rollouts
    follow the environment's own JAX model (:func:`priorguard.envs.jax_model`).

    Args:
        model: the split's `EnvModel`.
        states: ``[N, S]`` hidden states (``evaluate``'s ``true_states``).

    Returns:
        ``[N]`` values.
    """
    states = np.asarray(states, np.float32)
    n = states.shape[0]
    # padded to a shape bucket (with copies of the first state), so runs share the compiled rollout
    padded = np.concatenate([states, np.repeat(states[:1], shape_bucket(n, direction="up") - n, axis=0)])
    return _true_instrumental_values(model, proposal, params, key, jnp.asarray(padded),
                                     horizon, discount, rollouts)[:n]


@eqx.filter_jit
def _true_instrumental_values(model: Any, proposal: Any, params: Any, key: Any, states: Any, horizon: int,
                              discount: float, rollouts: int) -> Any:
    n = states.shape[0]

    def one(key):
        def step(carry, k):
            s, total, alive = carry
            k_a, k_s = jax.random.split(k)
            action = proposal.sample(params, k_a, jax.vmap(model.observe)(s).astype(jnp.float64), 1)[:, 0]
            # A's draws are in range by construction; the range check would be a host
            # callback here (under vmap and scan), and keep the program out of the cache
            nxt = jax.vmap(functools.partial(model.step, check_action=False))(s, action, jax.random.split(k_s, n))
            total = total + alive * jax.vmap(model.rater_value)(nxt).astype(jnp.float64)
            alive = alive * discount * (1.0 - jax.vmap(model.is_terminal)(nxt).astype(jnp.float64))
            return (nxt, total, alive), None

        init = (states, jnp.zeros(n, jnp.float64), jnp.ones(n, jnp.float64))
        (_, total, _), _ = jax.lax.scan(step, init, jax.random.split(key, horizon))
        return total

    return jnp.mean(jax.vmap(one)(jax.random.split(key, rollouts)), axis=0)

