"""The fit and assemble steps: T, W and D fitted on the train split, their posteriors made into
the function draws a planner calls (:class:`PlanningModels`), and A, the proposal policy.

I, fitted against A through W, is :mod:`priorguard.experiments.instrumental`.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from priorguard.experiments.context import RunContext
from priorguard.experiments.data import Transitions, encode_actions, subsample, termination_data
from priorguard.models.base import Data, FunctionDraws, Posterior, as_data
from priorguard.models.roles import fit_role, role_inputs
from priorguard.planners.worlds import PlanningModels
from priorguard.planners.proposals import (
    BoxUniformProposal,
    FixedProposal,
    MLPProposal,
    UniformProposal,
    fit_imitation,
    fit_policy_gradient,
)

#: D's keys fold this into existing streams, so that specs without D keep every number they had
TERMINATION_STREAM = 0x7E4D


class ColumnSelect:
    """Evaluates an inner draw function on selected input columns (hashable, static)."""

    def __init__(self, inner: Any, columns: tuple[int, ...]):
        self.inner, self.columns = inner, tuple(columns)

    def __call__(self, params: Any, x: Any) -> Any:
        return self.inner(params, x[..., jnp.asarray(self.columns)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ColumnSelect) and other.inner == self.inner and other.columns == self.columns

    def __hash__(self) -> int:
        return hash((ColumnSelect, self.columns))


class OutputScatter:
    """Places an inner draw function's outputs in ``columns`` of a ``width`` vector of zeros (hashable, static).

    W predicts the change of the observation columns some model reads; the others
    keep their value (a change of 0) in imagined transitions.
    """

    def __init__(self, inner: Any, columns: tuple[int, ...], width: int):
        self.inner, self.columns, self.width = inner, tuple(columns), int(width)

    def __call__(self, params: Any, x: Any) -> Any:
        out = self.inner(params, x)
        return jnp.zeros(out.shape[:-1] + (self.width,), out.dtype).at[..., jnp.asarray(self.columns)].set(out)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, OutputScatter) and other.inner == self.inner and other.columns == self.columns
                and other.width == self.width)

    def __hash__(self) -> int:
        return hash((OutputScatter, self.columns, self.width))


def select_columns(draws: FunctionDraws, columns: tuple[int, ...], width: int) -> FunctionDraws:
    """Draws that read ``columns`` of a ``width``-column input (the draws themselves when that is all of them)."""
    if columns == tuple(range(width)):
        return draws
    return FunctionDraws(draws.params, ColumnSelect(draws.apply_fn, columns))



@dataclasses.dataclass(frozen=True)
class RoleData:
    """What one role is fitted to: its spec, data and key, and :func:`fit_role`'s keyword arguments."""

    spec: Any
    data: Data
    key: Any
    kwargs: dict[str, Any]


def training_sets(ctx: RunContext, data: Transitions, keys: dict[str, Any]) -> tuple[dict[str, RoleData], np.ndarray]:
    """T's, W's and (when the spec has one) D's training data from the train split's fit episodes.

    Returns:
        ``(sets, train_states)``: role -> :class:`RoleData`, and every visited state with a
        rater label (T's inputs before subsampling, all feature columns) ``[M, F]``.
    """
    spec = ctx.spec
    cap = spec.data.max_points
    sets: dict[str, RoleData] = {}
    cols = role_inputs(spec.terminal, ctx.features)
    x_states = np.concatenate([data.obs[:1], data.next_obs])  # every visited state has a rater label
    y_states = np.concatenate([[np.nan], data.rater])
    keep = np.isfinite(y_states)
    x_states, y_states = x_states[keep], y_states[keep]
    idx = subsample(len(x_states), cap, jax.random.fold_in(keys["t"], 1))
    sets["terminal"] = RoleData(spec.terminal, as_data(x_states[idx][:, cols], y_states[idx]), keys["t"], {
        "feature_names": [ctx.features[c] for c in cols], "feature_ranges": [ctx.ranges[c] for c in cols]})

    wcols = role_inputs(spec.world, ctx.features)
    enc = encode_actions(data.action, ctx.info.num_actions)
    x_w = np.concatenate([data.obs[:, wcols], enc], axis=1)
    y_w = (data.next_obs - data.obs)[:, ctx.world_columns]
    idx = subsample(len(x_w), cap, jax.random.fold_in(keys["w"], 1))
    action_names = list(ctx.info.action_input_names)
    action_ranges = ([(0.0, 1.0)] * enc.shape[1] if ctx.discrete
                     else list(zip(ctx.info.action_low.tolist(), ctx.info.action_high.tolist())))
    sets["world"] = RoleData(spec.world, as_data(x_w[idx], y_w[idx]), keys["w"], {
        "feature_names": [ctx.features[c] for c in wcols] + action_names,
        "feature_ranges": [ctx.ranges[c] for c in wcols] + action_ranges,
        "output_names": [f"delta_{ctx.features[c]}" for c in ctx.world_columns],
        "num_action_columns": len(action_names)})

    if spec.termination is not None:
        dcols = role_inputs(spec.termination, ctx.features)
        x_d, y_d = termination_data(data)
        idx = subsample(len(x_d), cap, jax.random.fold_in(keys["w"], TERMINATION_STREAM + 1))
        sets["termination"] = RoleData(
            spec.termination, as_data(x_d[idx][:, dcols], y_d[idx]), jax.random.fold_in(keys["w"], TERMINATION_STREAM),
            {"feature_names": [ctx.features[c] for c in dcols], "feature_ranges": [ctx.ranges[c] for c in dcols]})
    return sets, x_states


#: role -> (progress label, timing name) of its fit
_FIT_STEPS = {"terminal": ("fit T (terminal value)", "fit_terminal_s"), "world": ("fit W (world model)", "fit_world_s"),
              "termination": ("fit D (termination)", "fit_termination_s")}


def fit_models(ctx: RunContext, data: Transitions, keys: dict[str, Any]) -> tuple[dict[str, Posterior], np.ndarray]:
    """Fits T, W and (when the spec has one) D on the train split's fit episodes.

    Returns:
        ``(posteriors, train_states)``: role -> posterior, and every visited state with a
        rater label (T's inputs before subsampling, all feature columns) ``[M, F]``.
    """
    sets, x_states = training_sets(ctx, data, keys)
    posteriors: dict[str, Posterior] = {}
    for role, rd in sets.items():
        label, timing = _FIT_STEPS[role]
        ctx.progress(label)
        t0 = time.perf_counter()
        posteriors[role] = fit_role(rd.spec, rd.data, key=rd.key, role=role, **rd.kwargs)
        ctx.timings[timing] = time.perf_counter() - t0
    return posteriors, x_states


def function_draws(ctx: RunContext, posterior: Posterior, key: Any) -> FunctionDraws:
    """The planner's function draws of a posterior (``planner.function_samples`` of them)."""
    p = ctx.spec.planner
    if "num_features" in inspect.signature(posterior.sample_functions).parameters:  # GP posteriors
        return posterior.sample_functions(key, p.function_samples, num_features=p.function_features)
    return posterior.sample_functions(key, p.function_samples)


def planning_models(ctx: RunContext, posteriors: dict[str, Posterior], data: Transitions, train_states: np.ndarray,
                    keys: dict[str, Any]) -> tuple[PlanningModels, Any, Any]:
    """The planner's models from the posteriors, and A; I is fitted here (against A) when the spec has it.

    Adds ``posteriors["instrumental"]``.

    Returns:
        ``(models, proposal, proposal_params)``.
    """
    from priorguard.experiments.instrumental import fit_instrumental

    spec = ctx.spec
    width = len(ctx.features)
    k_w, k_t, k_i = jax.random.split(keys["draws"], 3)
    wcols = role_inputs(spec.world, ctx.features)
    na = ctx.info.num_actions
    da = na if ctx.discrete else len(ctx.info.action_low)
    world = select_columns(function_draws(ctx, posteriors["world"], k_w),
                           tuple(wcols) + tuple(range(width, width + da)), width + da)
    if ctx.world_columns != list(range(width)):
        world = FunctionDraws(world.params, OutputScatter(world.apply_fn, tuple(ctx.world_columns), width))
    tcols = role_inputs(spec.terminal, ctx.features)
    action_space: dict[str, Any] = (
        {"num_actions": na} if ctx.discrete
        else {"action_low": jnp.asarray(ctx.info.action_low, jnp.float64),
              "action_high": jnp.asarray(ctx.info.action_high, jnp.float64)}
    )
    ends: dict[str, Any] = {}
    if spec.termination is not None:
        ends = {"termination": function_draws(ctx, posteriors["termination"],
                                              jax.random.fold_in(keys["draws"], TERMINATION_STREAM)),
                "termination_columns": role_inputs(spec.termination, ctx.features)}
    base = PlanningModels(world=world, terminal=function_draws(ctx, posteriors["terminal"], k_t),
                          terminal_columns=tcols, **ends, **action_space)
    proposal, params = make_proposal(ctx, base, data, keys["proposal"])
    if spec.instrumental is None:
        return base, proposal, params
    ctx.progress("fit I (instrumental value)")
    with ctx.timed("fit_instrumental_s"):
        posteriors["instrumental"] = fit_instrumental(ctx, base, proposal, params, data, train_states,
                                                      keys["targets"], k_i)
    models = PlanningModels(world=world, terminal=base.terminal,
                            instrumental=function_draws(ctx, posteriors["instrumental"], jax.random.fold_in(k_i, 2)),
                            terminal_columns=tcols, instrumental_columns=role_inputs(spec.instrumental, ctx.features),
                            **ends, **action_space)
    return models, proposal, params


def make_proposal(ctx: RunContext, models: PlanningModels, data: Transitions, key: Any) -> tuple[Any, Any]:
    """A, the proposal policy, and its parameters (fitted to the logged actions or through the models)."""
    p = ctx.spec.planner.proposal
    if not ctx.discrete:
        return BoxUniformProposal(models.action_low, models.action_high), None
    na = ctx.info.num_actions
    if p.kind == "uniform":
        return UniformProposal(na), None
    if p.kind == "fixed":
        return FixedProposal(na), jnp.asarray(p.logits, jnp.float64)[None, :]
    net = MLPProposal(num_actions=na, obs_dim=len(ctx.features), hidden_sizes=tuple(p.hidden))
    k_init, k_fit = jax.random.split(key)
    obs = jnp.asarray(data.obs, jnp.float64)
    params = net.init(k_init, obs=obs, dtype=jnp.float64)
    if p.kind == "behaviour" or p.objective == "imitation":
        params, _ = fit_imitation(net, params, k_fit, obs, jnp.asarray(data.action, jnp.int32),
                                  num_steps=p.steps)
    else:
        params, _ = fit_policy_gradient(net, params, k_fit, models, obs, num_steps=p.steps,
                                        horizon=1, discount=ctx.discount)
    return net, params
