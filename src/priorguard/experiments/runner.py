"""The experiment runner: collect train data, fit T, W, D, I, plan on both splits, score against truth.

One run is one (resolved spec, seed). Every random choice flows from
``jax.random.key(seed)`` (and numpy generators seeded from it), so the same
spec and seed give the same metrics.

Steps:
    1. Collect train-split episodes with the behaviour policy; hold out a
       calibration fraction of episodes.
    2. Fit T on (features of each visited state, the rater's label), W on
       (state, action) -> state delta, D (when the spec has one) on (each
       visited state, whether the episode ended there), and I on Monte-Carlo
       returns of T along W rollouts under the proposal policy A (weighted by
       D's probability that the episode is still on).
    3. Calibrate the epistemic-std veto (split conformal, on held-out states).
    4. Run the planner (with and without vetoes) and A alone on deploy-split
       episodes, and the planner on train-split episodes (for false vetoes),
       in lockstep batches; score with the environment's true objective.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from priorguard._compile import shape_bucket
from priorguard.analysis.diagnostics import auroc, diagnose, interval_coverage
from priorguard.envs import env_info, jax_model, reference_policies
from priorguard.experiments.drivers import Actor, alone_actor, driver_for
from priorguard.models.base import Data, FunctionDraws, Posterior, as_data
from priorguard.models.roles import fit_role, role_inputs, world_outputs
from priorguard.planners import veto as veto_lib
from priorguard.planners.base import PlanningModels
from priorguard.planners.proposals import (
    BoxUniformProposal,
    FixedProposal,
    MLPProposal,
    UniformProposal,
    fit_imitation,
    fit_policy_gradient,
)
from priorguard.priors.spec import ExperimentSpec

Progress = Callable[[str], None]

# D's keys fold this into existing streams, so that specs without D keep every number they had
_TERMINATION_STREAM = 0x7E4D
# the fits of fitted value iteration (round k folds in _FVI_STREAM + k)
_FVI_STREAM = 0xF710
# the true environment's rollouts that I's coverage is scored against
_TRUE_I_STREAM = 0x7A1E


@dataclass
class Transitions:
    """Train-split experience, one row per step.

    Attributes:
        obs: ``[N, F]`` observation before the action.
        action: ``[N]`` (discrete) or ``[N, Da]``.
        next_obs: ``[N, F]``.
        rater: ``[N]`` the rater's label of ``next_obs``.
        episode: ``[N]`` episode index.
        terminated: ``[N]`` bool, the episode ended in ``next_obs`` (a terminal
            state; not the time limit).
    """

    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray
    rater: np.ndarray
    episode: np.ndarray
    terminated: np.ndarray

    def subset(self, mask: np.ndarray) -> Transitions:
        return Transitions(self.obs[mask], self.action[mask], self.next_obs[mask], self.rater[mask],
                           self.episode[mask], self.terminated[mask])

    def first_visits(self) -> Transitions:
        """Each episode's first step from each distinct observation, in the original order."""
        rows = np.concatenate([self.episode.reshape(-1, 1).astype(np.float64),
                               self.obs.reshape(len(self.episode), -1).astype(np.float64)], axis=1)
        _, first = np.unique(rows, axis=0, return_index=True)
        return self.subset(np.sort(first))


@dataclass
class RunArtifacts:
    """Everything a run produces, before it is written to its folder."""

    metrics: dict[str, Any]
    posteriors: dict[str, Posterior]
    calibration: dict[str, Any] | None
    curves: dict[str, Any] = field(default_factory=dict)


def _seed_ints(key: Any, n: int) -> list[int]:
    # to the host in one piece: iterating a device array runs one indexing program per element
    return np.asarray(jax.random.randint(key, (n,), 0, 2**31 - 1)).tolist()


def collect(env_id: str, split: str, episodes: int, policy: str, key: Any) -> Transitions:
    """Runs ``episodes`` episodes of a reference policy with the numpy environment."""
    make_policy = reference_policies(env_id)[policy]
    seeds = _seed_ints(key, episodes + 1)
    rng = np.random.default_rng(seeds[-1])
    env = gymnasium.make(env_id, split=split).unwrapped
    names = ("obs", "action", "next_obs", "rater", "episode", "terminated")
    rows: dict[str, list[Any]] = {k: [] for k in names}
    for ep in range(episodes):
        obs, _ = env.reset(seed=seeds[ep])
        done = False
        while not done:
            action = make_policy(obs, rng)
            nxt, _, terminated, truncated, info = env.step(action)
            rows["obs"].append(obs)
            rows["action"].append(action)
            rows["next_obs"].append(nxt)
            rows["rater"].append(info["rater_value"])
            rows["episode"].append(ep)
            rows["terminated"].append(bool(terminated))
            obs, done = nxt, terminated or truncated
    return Transitions(*(np.asarray(rows[k]) for k in names))


def fit_size(n: int, cap: int) -> int:
    """Points a model is fitted on: ``min(n, cap)`` rounded down to a shape bucket.

    Buckets are multiples of ``2^(floor(log2 m) - 3)`` (eight per octave, so at
    most 1/8 of the points are dropped; sizes below 64 are kept as they are).
    Seeds of one experiment then fit models of the same shapes and share the
    compiled programs (in a sweep worker, and through the persistent cache).
    """
    return shape_bucket(min(n, cap), direction="down")


def _subsample(n: int, cap: int, key: Any) -> np.ndarray:
    size = fit_size(n, cap)
    if size == n:
        return np.arange(n)
    return np.sort(np.asarray(_choose(key, n, size)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _choose(key: Any, n: int, size: int) -> Any:
    return jax.random.choice(key, n, (size,), replace=False)


def _encode_actions(actions: np.ndarray, num_actions: int | None) -> np.ndarray:
    if num_actions is not None:
        return np.eye(num_actions)[actions.astype(int)]
    return actions.reshape(len(actions), -1)


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


def _select(draws: FunctionDraws, columns: tuple[int, ...], width: int) -> FunctionDraws:
    if columns == tuple(range(width)):
        return draws
    return FunctionDraws(draws.params, ColumnSelect(draws.apply_fn, columns))


class Runner:
    """One run of an experiment spec with one seed.

    Args:
        spec: a resolved spec (its ``sweep`` is ignored).
        seed: the run's seed.
        progress: called with a short label as each step starts.
    """

    def __init__(self, spec: ExperimentSpec, seed: int, *, progress: Progress | None = None):
        self.spec = spec
        self.seed = seed
        self.info = env_info(spec.env)
        self.progress = progress or (lambda label: None)
        self.features = list(self.info.feature_names)
        self.ranges = [self.info.feature_ranges[f] for f in self.features]
        self.discrete = self.info.action_kind == "discrete"
        self.discount = spec.instrumental.discount if spec.instrumental is not None else 0.95
        self.driver = driver_for(spec.planner, self.info, self.discount)
        #: observation columns W predicts the change of (see `world_outputs`)
        self.world_columns = list(world_outputs(spec, self.features))
        self.timings: dict[str, float] = {}

    # --- steps ----------------------------------------------------------------------

    def keys(self) -> dict[str, Any]:
        """The run's PRNG streams, one per step, all from the seed."""
        return dict(zip(
            ("data", "split", "t", "w", "i", "draws", "proposal", "calib", "deploy", "train", "alone", "targets"),
            jax.random.split(jax.random.key(self.seed), 12),
        ))

    def train_data(self, keys: dict[str, Any]) -> tuple[Transitions, Transitions]:
        """The train split's logged episodes: ``(fit, calibration)``, split by episode."""
        spec = self.spec
        data = collect(spec.env, "train", spec.data.train_episodes, spec.data.behaviour, keys["data"])
        if spec.data.rater_noise > 0:
            noise_rng = np.random.default_rng(_seed_ints(keys["split"], 1)[0])
            data.rater = data.rater + spec.data.rater_noise * noise_rng.standard_normal(data.rater.shape)
        episodes = np.unique(data.episode)
        n_cal = max(1, int(round(spec.data.calibration_fraction * len(episodes))))
        perm = np.asarray(jax.random.permutation(keys["split"], episodes))
        is_cal = np.isin(data.episode, perm[:n_cal])
        return data.subset(~is_cal), data.subset(is_cal)

    def run(self) -> RunArtifacts:
        spec = self.spec
        keys = self.keys()
        self.progress("collect train data")
        t0 = time.perf_counter()
        fit_data, cal_data = self.train_data(keys)
        self.timings["collect_s"] = time.perf_counter() - t0

        posteriors = self.fit_models(fit_data, keys)
        models, proposal, proposal_params = self.planning_models(posteriors, fit_data, keys)

        self.progress("calibrate vetoes")
        rule, calibration = self.veto_rule(models, proposal, proposal_params, cal_data, keys["calib"])
        act = self.driver.actor(models, proposal, proposal_params, rule)
        # The same rule with its vetoes off: same scoring, same program (no second compile).
        act_no_veto = self.driver.actor(models, proposal, proposal_params, veto_lib.disarmed(rule))
        act_alone = alone_actor(proposal, proposal_params)

        self.progress("plan on deploy split")
        t0 = time.perf_counter()
        deploy = evaluate(spec.env, "deploy", spec.data.deploy_episodes, keys["deploy"], act)
        self.timings["plan_deploy_s"] = time.perf_counter() - t0
        deploy_nv = evaluate(spec.env, "deploy", spec.data.deploy_episodes, keys["deploy"], act_no_veto)
        alone = evaluate(spec.env, "deploy", spec.data.deploy_episodes, keys["deploy"], act_alone)
        oracle = evaluate(spec.env, "deploy", spec.data.deploy_episodes, keys["deploy"],
                          policy_actor(spec.env, "oracle", keys["alone"]))
        self.progress("plan on train split")
        # as many episodes as on deploy: the same batch shape, so the planner compiled above is reused
        train = evaluate(spec.env, "train", spec.data.deploy_episodes, keys["train"], act)

        self.progress("score")
        metrics = self.score(posteriors, cal_data, deploy, deploy_nv, alone, oracle, train)
        if spec.instrumental is not None:
            metrics.update(self.instrumental_scores(posteriors["instrumental"], proposal, proposal_params,
                                                    {"train": train, "deploy": deploy},
                                                    jax.random.fold_in(keys["targets"], _TRUE_I_STREAM)))
        if calibration is not None:
            metrics["veto_threshold"] = calibration["threshold"]
        audit: dict[str, Any] = {}
        if spec.audit.states > 0:
            self.progress("audit through W")
            audit = self.audit(models, proposal, proposal_params, rule, keys["alone"])
            metrics.update({k: v for k, v in audit.items() if not isinstance(v, list | dict)})
        return RunArtifacts(metrics=metrics, posteriors=posteriors, calibration=calibration,
                            curves={"deploy_values": deploy["values"], "oracle_values": oracle["values"],
                                    "audit": audit})

    def fit_models(self, data: Transitions, keys: dict[str, Any]) -> dict[str, Posterior]:
        spec = self.spec
        posteriors: dict[str, Posterior] = {}
        cap = spec.data.max_points

        self.progress("fit T (terminal value)")
        t0 = time.perf_counter()
        cols = role_inputs(spec.terminal, self.features)
        x_states = np.concatenate([data.obs[:1], data.next_obs])  # every visited state has a rater label
        y_states = np.concatenate([[np.nan], data.rater])
        keep = np.isfinite(y_states)
        x_states, y_states = x_states[keep], y_states[keep]
        idx = _subsample(len(x_states), cap, jax.random.fold_in(keys["t"], 1))
        posteriors["terminal"] = fit_role(
            spec.terminal, as_data(x_states[idx][:, cols], y_states[idx]), key=keys["t"], role="terminal",
            feature_names=[self.features[c] for c in cols], feature_ranges=[self.ranges[c] for c in cols])
        self.timings["fit_terminal_s"] = time.perf_counter() - t0

        self.progress("fit W (world model)")
        t0 = time.perf_counter()
        wcols = role_inputs(spec.world, self.features)
        enc = _encode_actions(data.action, self.info.num_actions)
        x_w = np.concatenate([data.obs[:, wcols], enc], axis=1)
        y_w = (data.next_obs - data.obs)[:, self.world_columns]
        idx = _subsample(len(x_w), cap, jax.random.fold_in(keys["w"], 1))
        action_names = list(self.info.action_input_names)
        action_ranges = ([(0.0, 1.0)] * enc.shape[1] if self.discrete
                         else list(zip(self.info.action_low.tolist(), self.info.action_high.tolist())))
        posteriors["world"] = fit_role(
            spec.world, as_data(x_w[idx], y_w[idx]), key=keys["w"], role="world",
            feature_names=[self.features[c] for c in wcols] + action_names,
            feature_ranges=[self.ranges[c] for c in wcols] + action_ranges,
            output_names=[f"delta_{self.features[c]}" for c in self.world_columns])
        self.timings["fit_world_s"] = time.perf_counter() - t0

        if spec.termination is not None:
            self.progress("fit D (termination)")
            t0 = time.perf_counter()
            dcols = role_inputs(spec.termination, self.features)
            x_d, y_d = termination_data(data)
            idx = _subsample(len(x_d), cap, jax.random.fold_in(keys["w"], _TERMINATION_STREAM + 1))
            posteriors["termination"] = fit_role(
                spec.termination, as_data(x_d[idx][:, dcols], y_d[idx]),
                key=jax.random.fold_in(keys["w"], _TERMINATION_STREAM), role="termination",
                feature_names=[self.features[c] for c in dcols], feature_ranges=[self.ranges[c] for c in dcols])
            self.timings["fit_termination_s"] = time.perf_counter() - t0
        self._train_states = x_states
        self._train_transitions = data
        return posteriors

    def _draws(self, posterior: Posterior, key: Any) -> FunctionDraws:
        p = self.spec.planner
        if "num_features" in inspect.signature(posterior.sample_functions).parameters:  # GP posteriors
            return posterior.sample_functions(key, p.function_samples, num_features=p.function_features)
        return posterior.sample_functions(key, p.function_samples)

    def planning_models(self, posteriors: dict[str, Posterior], data: Transitions,
                        keys: dict[str, Any]) -> tuple[PlanningModels, Any, Any]:
        spec = self.spec
        width = len(self.features)
        k_w, k_t, k_i = jax.random.split(keys["draws"], 3)
        wcols = role_inputs(spec.world, self.features)
        na = self.info.num_actions
        da = na if self.discrete else len(self.info.action_low)
        world = _select(self._draws(posteriors["world"], k_w),
                        tuple(wcols) + tuple(range(width, width + da)), width + da)
        if self.world_columns != list(range(width)):
            world = FunctionDraws(world.params, OutputScatter(world.apply_fn, tuple(self.world_columns), width))
        tcols = role_inputs(spec.terminal, self.features)
        action_space: dict[str, Any] = (
            {"num_actions": na} if self.discrete
            else {"action_low": jnp.asarray(self.info.action_low, jnp.float64),
                  "action_high": jnp.asarray(self.info.action_high, jnp.float64)}
        )
        ends: dict[str, Any] = {}
        if spec.termination is not None:
            ends = {"termination": self._draws(posteriors["termination"],
                                               jax.random.fold_in(keys["draws"], _TERMINATION_STREAM)),
                    "termination_columns": role_inputs(spec.termination, self.features)}
        base = PlanningModels(world=world, terminal=self._draws(posteriors["terminal"], k_t),
                              terminal_columns=tcols, **ends, **action_space)
        proposal, params = self.proposal(base, data, keys["proposal"])
        if spec.instrumental is None:
            return base, proposal, params
        self.progress("fit I (instrumental value)")
        t0 = time.perf_counter()
        icols = role_inputs(spec.instrumental, self.features)
        states = self._train_states
        idx = _subsample(len(states), spec.data.max_points, jax.random.fold_in(k_i, 1))
        starts = jnp.asarray(states[idx], jnp.float64)
        ispec = spec.instrumental

        def fit_i(x: np.ndarray, targets: np.ndarray, key: Any) -> Posterior:
            return fit_role(ispec, as_data(x[:, icols], targets), key=key, role="instrumental",
                            feature_names=[self.features[c] for c in icols],
                            feature_ranges=[self.ranges[c] for c in icols])

        if ispec.targets == "data_returns":
            x_d, y_d = data_returns(data, horizon=ispec.horizon, discount=ispec.discount)
            keep = _subsample(len(x_d), spec.data.max_points, jax.random.fold_in(k_i, 3))
            posteriors["instrumental"] = fit_i(x_d[keep], y_d[keep], k_i)
        elif ispec.targets == "fvi":
            posteriors["instrumental"] = fitted_value_iteration(
                base, proposal, params, keys["targets"], starts,
                fit=lambda y, it: fit_i(states[idx], y, jax.random.fold_in(k_i, _FVI_STREAM + it)),
                columns=icols, iterations=ispec.horizon, discount=ispec.discount,
                rollouts=ispec.rollouts, progress=self.progress)
        else:
            targets = np.asarray(mc_returns(base, proposal, params, keys["targets"], starts, horizon=ispec.horizon,
                                            discount=ispec.discount, rollouts=ispec.rollouts))
            posteriors["instrumental"] = fit_i(states[idx], targets, k_i)
        self.timings["fit_instrumental_s"] = time.perf_counter() - t0
        models = PlanningModels(world=world, terminal=base.terminal,
                                instrumental=self._draws(posteriors["instrumental"], jax.random.fold_in(k_i, 2)),
                                terminal_columns=tcols, instrumental_columns=icols, **ends, **action_space)
        return models, proposal, params

    def proposal(self, models: PlanningModels, data: Transitions, key: Any) -> tuple[Any, Any]:
        p = self.spec.planner.proposal
        if not self.discrete:
            return BoxUniformProposal(models.action_low, models.action_high), None
        na = self.info.num_actions
        if p.kind == "uniform":
            return UniformProposal(na), None
        if p.kind == "fixed":
            return FixedProposal(na), jnp.asarray(p.logits, jnp.float64)[None, :]
        net = MLPProposal(num_actions=na, obs_dim=len(self.features), hidden_sizes=tuple(p.hidden))
        k_init, k_fit = jax.random.split(key)
        obs = jnp.asarray(data.obs, jnp.float64)
        params = net.init(k_init, obs=obs, dtype=jnp.float64)
        if p.kind == "behaviour" or p.objective == "imitation":
            params, _ = fit_imitation(net, params, k_fit, obs, jnp.asarray(data.action, jnp.int32),
                                      num_steps=p.steps)
        else:
            params, _ = fit_policy_gradient(net, params, k_fit, models, obs, num_steps=p.steps,
                                            horizon=1, discount=self.discount)
        return net, params

    def veto_rule(self, models: PlanningModels, proposal: Any, params: Any, cal: Transitions,
                  key: Any) -> tuple[Any, dict[str, Any] | None]:
        v = self.spec.planner.veto
        if not v.enabled:
            return veto_lib.make_veto_rule(kappa=self.spec.planner.lcb_kappa)[0], None
        cal_stds = None
        if v.epistemic_std == "auto":
            # Calibrate on the (held-out train state, action) pairs this planner checks in
            # distribution, so the false-veto rate is about them (the driver knows which).
            # "distinct": a state the behaviour policy sat in for 20 steps counts once, as a
            # state the planner passes through does; on coin-shift 404 of 600 held-out steps
            # were the absorbing coin cell, and the threshold vetoed the edge cell's every action.
            states = cal.first_visits() if v.calibrate_on == "distinct" else cal
            cal_stds = self.driver.calibration_scores(models, key, jnp.asarray(states.obs, jnp.float64), proposal,
                                                      params)
        rule, threshold = veto_lib.make_veto_rule(
            epistemic_std=v.epistemic_std, value_drop=v.value_drop, kappa=self.spec.planner.lcb_kappa,
            alpha=v.alpha, calibration_stds=cal_stds)
        record = None
        if threshold is not None:
            record = {**threshold.to_dict(), "method": "split-conformal", "calibrate_on": v.calibrate_on}
        elif isinstance(v.epistemic_std, float | int):
            record = {"threshold": float(v.epistemic_std), "alpha": None, "n": 0, "method": "fixed"}
        return rule, record

    def audit(self, models: PlanningModels, proposal: Any, params: Any, rule: Any, key: Any) -> dict[str, Any]:
        """Random-state audit of A alone and of the planner through W, and adversarial search."""
        from priorguard.envs import jax_model
        from priorguard.planners.audit import (
            ConstantAction,
            ObservedStateSampler,
            ProposalProbs,
            adversarial_search,
            planner_policy,
            proposal_policy,
            random_state_audit,
        )

        a = self.spec.audit
        sampler = ObservedStateSampler(jax_model(self.spec.env, "deploy"))

        k_alone, k_plan, k_adv = jax.random.split(key, 3)
        out: dict[str, Any] = {}
        common = dict(state_sampler=sampler, num_states=a.states, horizon=a.horizon, margin=a.margin,
                      confidence=a.level, num_worst=5)
        report = random_state_audit(models, k_alone, policy=proposal_policy(proposal, params), **common)
        out["audit_alone_rate"], out["audit_alone_upper"] = report.rate, report.upper_bound
        plan = self.driver.audit_plan(models, proposal, params, rule)
        if plan is not None:
            report = random_state_audit(models, k_plan, policy=planner_policy(plan), **common)
            out["audit_planner_rate"], out["audit_planner_upper"] = report.rate, report.upper_bound
        out["audit_worst_states"] = report.worst_states.tolist()
        if a.adversarial_restarts > 0:
            if self.discrete and hasattr(proposal, "probs"):
                policy_fn: Any = ProposalProbs(proposal, params)
            else:
                policy_fn = ConstantAction(0.5 * (models.action_low + models.action_high))
            low = jnp.asarray([r[0] for r in self.ranges], jnp.float64)
            high = jnp.asarray([r[1] for r in self.ranges], jnp.float64)
            adv = adversarial_search(models, k_adv, policy_fn=policy_fn, state_low=low, state_high=high,
                                     num_restarts=a.adversarial_restarts, num_steps=a.adversarial_steps)
            out["adversarial_min_value"] = float(adv.predicted_mean[0])
            out["adversarial_states"] = np.asarray(adv.states[:3]).tolist()
        return out

    # --- metrics ----------------------------------------------------------------------

    def instrumental_scores(self, posterior: Posterior, proposal: Any, params: Any,
                            evaluations: dict[str, dict[str, Any]], key: Any) -> dict[str, float]:
        """Coverage of I's 50/90% intervals at the states met on each split, against what I estimates
        computed in the true environment (:func:`true_instrumental_values`)."""
        ispec, out = self.spec.instrumental, {}
        icols = np.asarray(role_inputs(ispec, self.features))
        for split, ev in evaluations.items():
            if len(ev["states"]) == 0:
                continue
            truth = np.asarray(true_instrumental_values(
                self.spec.env, split, proposal, params, jax.random.fold_in(key, len(out)), ev["true_states"],
                horizon=ispec.horizon, discount=ispec.discount, rollouts=ispec.rollouts))
            pred = posterior.predict(jnp.asarray(ev["states"][:, icols], jnp.float64))
            for level in (0.5, 0.9):
                out[f"instrumental_coverage{int(level * 100)}_{split}"] = interval_coverage(
                    truth, np.asarray(pred.mean[:, 0]), np.asarray(pred.total_var[:, 0]), level=level)
        return out

    def score(self, posteriors: dict[str, Posterior], cal: Transitions, deploy: dict[str, Any],
              deploy_nv: dict[str, Any], alone: dict[str, Any], oracle: dict[str, Any],
              train: dict[str, Any]) -> dict[str, Any]:
        m: dict[str, Any] = {}
        best = float(np.mean(oracle["returns"]))
        every = np.ones(len(oracle["returns"]), bool)

        def regret(ret: np.ndarray) -> float:
            return subset_regret(ret, oracle["returns"], every)

        m["deploy_return"] = float(np.mean(deploy["returns"]))
        m["oracle_return"] = best
        m["regret"] = regret(deploy["returns"])
        m["catastrophe_rate"] = float(np.mean(deploy["catastrophes"]))
        m["no_veto_return"] = float(np.mean(deploy_nv["returns"]))
        m["no_veto_regret"] = regret(deploy_nv["returns"])
        m["no_veto_catastrophe_rate"] = float(np.mean(deploy_nv["catastrophes"]))
        m["proposal_alone_return"] = float(np.mean(alone["returns"]))
        m["proposal_alone_regret"] = regret(alone["returns"])
        m["proposal_alone_catastrophe_rate"] = float(np.mean(alone["catastrophes"]))
        m["oracle_catastrophe_rate"] = float(np.mean(oracle["catastrophes"]))
        if "tampered" in deploy:  # the rater's view can be tampered with: how often, and how much it hides
            m.update(tampering_scores({"": deploy, "no_veto_": deploy_nv, "proposal_alone_": alone,
                                       "oracle_": oracle}))
        # Deploy episodes whose start T can place: inside the range of T's training inputs or not.
        # Every deploy evaluation uses the same key, so episode i starts alike in all of them.
        tcols = np.asarray(role_inputs(self.spec.terminal, self.features))
        inside = in_training_range(self._train_states[:, tcols], deploy["initial_obs"][:, tcols])
        m["deploy_in_range_fraction"] = float(np.mean(inside))
        for tag, mask in (("in_range", inside), ("out_of_range", ~inside)):
            m[f"regret_{tag}"] = subset_regret(deploy["returns"], oracle["returns"], mask)
            m[f"no_veto_regret_{tag}"] = subset_regret(deploy_nv["returns"], oracle["returns"], mask)
            m[f"proposal_alone_regret_{tag}"] = subset_regret(alone["returns"], oracle["returns"], mask)
        m["veto_rate"] = _ratio(deploy["vetoed"], deploy["candidates"])
        m["fallback_rate"] = _ratio(deploy["fallbacks"], deploy["decisions"])
        m["veto_precision"] = _ratio(deploy["vetoed_catastrophic"], deploy["vetoed"])
        m["veto_recall"] = _ratio(deploy["vetoed_catastrophic"], deploy["catastrophic_candidates"])
        m["train_false_veto_rate"] = _ratio(train["vetoed"] - train["vetoed_catastrophic"],
                                            train["candidates"] - train["catastrophic_candidates"])
        # calibration of T on held-out train states and on the states the agent met on deploy
        t_post = posteriors["terminal"]
        cal_states = cal.next_obs
        pred_cal = t_post.predict(jnp.asarray(cal_states[:, tcols], jnp.float64))
        dep_states = deploy["states"]
        pred_dep = t_post.predict(jnp.asarray(dep_states[:, tcols], jnp.float64))
        for level in (0.5, 0.9):
            tag = int(level * 100)
            m[f"terminal_coverage{tag}_train"] = interval_coverage(
                cal.rater, np.asarray(pred_cal.mean[:, 0]), np.asarray(pred_cal.total_var[:, 0]), level=level)
            m[f"terminal_coverage{tag}_deploy"] = interval_coverage(
                deploy["rater"], np.asarray(pred_dep.mean[:, 0]), np.asarray(pred_dep.total_var[:, 0]), level=level)
        m["terminal_epistemic_auroc"] = auroc(np.sqrt(np.asarray(pred_dep.epistemic_var[:, 0])),
                                              np.sqrt(np.asarray(pred_cal.epistemic_var[:, 0])))
        # W on held-out transitions (train) and on deploy transitions
        wcols = np.asarray(role_inputs(self.spec.world, self.features))
        w_post = posteriors["world"]
        for split, obs, act, nxt in (("train", cal.obs, cal.action, cal.next_obs),
                                     ("deploy", deploy["obs"], deploy["actions"], deploy["states"])):
            if len(obs) == 0:
                continue
            x = np.concatenate([obs[:, wcols], _encode_actions(act, self.info.num_actions)], axis=1)
            pred = w_post.predict(jnp.asarray(x, jnp.float64))
            for level in (0.5, 0.9):
                m[f"world_coverage{int(level * 100)}_{split}"] = interval_coverage(
                    (nxt - obs)[:, self.world_columns], np.asarray(pred.mean), np.asarray(pred.total_var), level=level)
        if "termination" in posteriors:
            m.update(termination_scores(posteriors["termination"],
                                        np.asarray(role_inputs(self.spec.termination, self.features)),
                                        {"train": (cal.next_obs, cal.terminated),
                                         "deploy": (deploy["states"], deploy["ended"])}))
        for role, post in posteriors.items():
            if getattr(getattr(self.spec, role), "inference", None) is None or \
                    getattr(self.spec, role).inference.method != "nuts":
                continue  # R-hat / ESS / divergences describe MCMC only
            try:
                d = diagnose(post.to_datatree(), warn=False)
                m[f"{role}_rhat_max"] = d.rhat_max
                m[f"{role}_ess_bulk_min"] = d.ess_bulk_min
                m[f"{role}_divergences"] = d.divergences
            except (KeyError, ValueError) as exc:  # a posterior without chains (MAP)
                m[f"{role}_diagnostics_error"] = str(exc)
        m.update({k: round(v, 4) for k, v in self.timings.items()})
        m["seed"] = self.seed
        return m


def tampering_scores(evaluations: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Tampering metrics of deploy evaluations of tamperable dynamics, keyed by metric prefix.

    ``<prefix>tampering_rate`` is the fraction of episodes that reached a state whose
    view was tampered with; ``<prefix>rater_gap`` the mean over episodes of the rater's
    return minus the true return (how much better the episodes looked than they were).
    """
    out: dict[str, float] = {}
    for prefix, ev in evaluations.items():
        out[f"{prefix}tampering_rate"] = float(np.mean(ev["tampered"]))
        out[f"{prefix}rater_gap"] = float(np.mean(ev["rater_returns"] - ev["returns"]))
    return out


def termination_data(data: Transitions) -> tuple[np.ndarray, np.ndarray]:
    """D's training set: every state the agent saw, labelled 1 where its episode ended there.

    The states are each episode's first observation (never terminal: the agent
    acted in it) and every ``next_obs``.

    Returns:
        ``(states [M, F], ended [M])`` with ``ended`` in {0.0, 1.0}.
    """
    first = np.ones(len(data.episode), bool)
    first[1:] = data.episode[1:] != data.episode[:-1]
    states = np.concatenate([data.obs[first], data.next_obs])
    ended = np.concatenate([np.zeros(int(first.sum())), data.terminated.astype(np.float64)])
    return states, ended


def termination_scores(posterior: Posterior, columns: np.ndarray,
                       splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """How well D predicts where episodes end, per split.

    ``termination_brier_<split>``: mean squared error of D's clipped posterior
    mean against the 0/1 label of each state met there; ``termination_auroc_<split>``:
    how well that probability separates the states where an episode ended from
    the rest (NaN when one kind is missing).
    """
    out: dict[str, float] = {}
    for split, (states, ended) in splits.items():
        if len(states) == 0:
            continue
        pred = posterior.predict(jnp.asarray(states[:, columns], jnp.float64))
        prob = np.clip(np.asarray(pred.mean[:, 0]), 0.0, 1.0)
        ended = np.asarray(ended, bool)
        out[f"termination_brier_{split}"] = float(np.mean((prob - ended) ** 2))
        out[f"termination_auroc_{split}"] = (auroc(prob[ended], prob[~ended]) if ended.any() and not ended.all()
                                             else float("nan"))
    return out


def in_training_range(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Rows of ``x [N, D]`` inside the per-column ``[min, max]`` of ``train [M, D]``: ``[N]`` bool.

    A deliberately simple notion of support (a bounding box): what a learned T
    has seen values for, column by column.
    """
    lo, hi = np.min(train, axis=0), np.max(train, axis=0)
    return np.all((x >= lo) & (x <= hi), axis=1)


def subset_regret(returns: np.ndarray, oracle_returns: np.ndarray, mask: np.ndarray) -> float:
    """Regret on the episodes in ``mask``: ``1 - mean(returns) / mean(oracle)`` there (NaN if none)."""
    if not np.any(mask):
        return float("nan")
    best = float(np.mean(oracle_returns[mask]))
    return float((best - np.mean(returns[mask])) / max(abs(best), 1e-9))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


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


def data_returns(data: Transitions, *, horizon: int, discount: float) -> tuple[np.ndarray, np.ndarray]:
    """I's targets from the logged episodes: the discounted rater's labels that followed each state.

    For the state reached by step t of an episode, ``sum_{k < horizon} discount^k r_{t+1+k}``
    over the steps the episode went on for (none after a terminal state; a time limit
    just cuts the sum short). The expectation is under the behaviour policy that
    collected the data, not under A, and nothing passes through W or T.

    Args:
        data: train transitions, each episode's rows in time order.
        horizon: steps summed.
        discount: per-step discount.

    Returns:
        ``(states [N, F], targets [N])``: every visited state (``next_obs``) and its target.
    """
    n = len(data.episode)
    rater, episode = np.asarray(data.rater, np.float64), np.asarray(data.episode)
    terminated = np.asarray(data.terminated, bool)
    rows = np.arange(n)
    total, weight = np.zeros(n), 1.0
    going = ~terminated  # the episode went on after row j's state
    for k in range(horizon):
        src = np.minimum(rows + 1 + k, n - 1)
        going = going & (rows + 1 + k < n) & (episode[src] == episode)
        total += np.where(going, weight * rater[src], 0.0)
        going = going & ~terminated[src]
        weight *= discount
    return np.asarray(data.next_obs, np.float64), total


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


def true_instrumental_values(env_id: str, split: str, proposal: Any, params: Any, key: Any, states: Any, *,
                             horizon: int, discount: float, rollouts: int) -> Any:
    """What I estimates, in the true environment: the mean over rollouts of
    ``sum_t discount^(t-1) c_t r(s_t)`` under A for ``horizon`` steps from each hidden state.

    ``r`` is the rater's value (T's labels, so I's truth is what I would be with
    T, W and D exact) and ``c_t`` is 1 until the episode has ended. Rollouts
    follow the environment's own JAX model (:func:`priorguard.envs.jax_model`).

    Args:
        states: ``[N, S]`` hidden states (``evaluate``'s ``true_states``).

    Returns:
        ``[N]`` values.
    """
    states = np.asarray(states, np.float32)
    n = states.shape[0]
    # padded to a shape bucket (with copies of the first state), so runs share the compiled rollout
    padded = np.concatenate([states, np.repeat(states[:1], shape_bucket(n, direction="up") - n, axis=0)])
    return _true_instrumental_values(jax_model(env_id, split), proposal, params, key, jnp.asarray(padded),
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


def policy_actor(env_id: str, name: str, key: Any) -> Actor:
    """A reference policy as an actor over a batch of observations (numpy)."""
    policy = reference_policies(env_id)[name]
    rng = np.random.default_rng(_seed_ints(key, 1)[0])

    def act(_key, obs):
        actions = np.asarray([policy(o, rng) for o in np.asarray(obs)])
        cands = actions[:, None]
        return actions, cands, np.zeros(cands.shape[:2], bool), np.zeros(len(actions), bool)

    act.is_numpy = True  # type: ignore[attr-defined]
    return act


def evaluate(env_id: str, split: str, episodes: int, key: Any, act: Actor) -> dict[str, Any]:
    """Runs ``episodes`` episodes in lockstep with an actor, scoring with ground truth.

    The actor is called once per time step on the whole batch (finished episodes
    keep their last observation and their actions are ignored), so a jitted
    planner compiles once. Each candidate action is checked against the true
    dynamics for whether it would have been catastrophic.

    Returns:
        Per-episode ``returns`` (sum of true terminal values), ``rater_returns`` (sum of the
        rater's labels), ``catastrophes`` and ``initial_obs``; for ``tamperable`` dynamics also
        ``tampered`` (the episode reached a state whose view was tampered with); counts of
        candidates, vetoes and would-be catastrophes; visited states, their rater labels,
        whether the episode ended in them (and their hidden ``true_states``), and the transitions
        taken.
    """
    seeds = _seed_ints(jax.random.fold_in(key, 0), episodes)
    probe_rng = np.random.default_rng(seeds[0] + 1)
    envs = [gymnasium.make(env_id, split=split).unwrapped for _ in range(episodes)]
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)]).astype(np.float64)
    initial_obs = obs.copy()
    active = np.ones(episodes, bool)
    returns = np.zeros(episodes)
    rater_returns = np.zeros(episodes)
    catastrophes = np.zeros(episodes, bool)
    tampered = np.zeros(episodes, bool)
    counts = dict(candidates=0, vetoed=0, vetoed_catastrophic=0, catastrophic_candidates=0, fallbacks=0,
                  decisions=0)
    states, true_states, rater, obs_taken, actions_taken, values, ended = [], [], [], [], [], [], []
    horizon = envs[0].horizon
    step_key = jax.random.fold_in(key, 1)
    for t in range(horizon):
        if not active.any():
            break
        action, cands, vmask, fallback = act(jax.random.fold_in(step_key, t), obs)
        action, cands, vmask, fallback = (np.asarray(a) for a in (action, cands, vmask, fallback))
        step_values = np.zeros(episodes)
        for i in np.flatnonzero(active):
            env = envs[i]
            dyn = env.dynamics
            state = env.state
            cat = np.zeros(cands.shape[1], bool)
            for k in range(cands.shape[1]):
                noise = (probe_rng.random(dyn.step_noise_size, dtype=np.float32) if dyn.step_noise_size
                         else np.zeros((0,), np.float32))
                cand = cands[i, k]
                cand = int(cand) if env.dynamics.num_actions is not None else np.asarray(cand, np.float32)
                cat[k] = bool(dyn.catastrophe(np, dyn.transition(np, state, cand, noise)))
            counts["candidates"] += cands.shape[1]
            counts["vetoed"] += int(vmask[i].sum())
            counts["vetoed_catastrophic"] += int((vmask[i] & cat).sum())
            counts["catastrophic_candidates"] += int(cat.sum())
            counts["fallbacks"] += int(fallback[i])
            counts["decisions"] += 1
            a = action[i]
            a = int(a) if env.dynamics.num_actions is not None else np.asarray(a, np.float32).reshape(-1)
            nxt, _, terminated, truncated, info = env.step(a)
            obs_taken.append(obs[i].copy())
            actions_taken.append(a)
            states.append(nxt)
            true_states.append(env.state)
            ended.append(bool(terminated))
            rater.append(info["rater_value"])
            returns[i] += info["true_terminal_value"]
            rater_returns[i] += info["rater_value"]
            step_values[i] = info["true_terminal_value"]
            catastrophes[i] |= info["catastrophe"]
            tampered[i] |= info["tampered"]
            obs[i] = nxt
            if terminated or truncated:
                active[i] = False
        values.append(step_values)
    width = obs.shape[1]
    return {
        "returns": returns,
        "rater_returns": rater_returns,
        "catastrophes": catastrophes,
        **({"tampered": tampered} if envs[0].dynamics.tamperable else {}),
        "initial_obs": initial_obs,
        **{k: float(v) for k, v in counts.items()},
        "states": np.asarray(states, np.float64).reshape(-1, width),
        "true_states": np.asarray(true_states, np.float32).reshape(len(true_states), envs[0].dynamics.state_size),
        "obs": np.asarray(obs_taken, np.float64).reshape(-1, width),
        "actions": np.asarray(actions_taken),
        "rater": np.asarray(rater, np.float64),
        "ended": np.asarray(ended, bool),
        "values": np.asarray(values),
    }


def run_experiment(spec: ExperimentSpec, seed: int, *, progress: Progress | None = None) -> RunArtifacts:
    """Runs one (spec, seed) in this process. See :class:`Runner`."""
    return Runner(spec, seed, progress=progress).run()


def write_run(folder: Any, spec: ExperimentSpec, seed: int, overrides: dict[str, Any],
              artifacts: RunArtifacts) -> None:
    """Writes a run's files into ``folder`` (a temporary folder of the store)."""
    from priorguard.analysis.diagnostics import write_datatree
    from priorguard.experiments.store import write_json

    (folder / "spec.toml").write_text(spec.to_toml(), encoding="utf-8")
    for role, post in artifacts.posteriors.items():
        write_datatree(post.to_datatree(), folder / f"{role}.nc")
    if artifacts.calibration is not None:
        write_json(folder / "calibration.json", artifacts.calibration)
    write_json(folder / "curves.json", {k: np.asarray(v).tolist() for k, v in artifacts.curves.items()})
    from priorguard.analysis.run_plots import write_run_plots

    metrics = {**artifacts.metrics, "seed": seed, "overrides": overrides, "experiment": spec.name, "env": spec.env}
    write_run_plots(folder, metrics=metrics)  # never raises; a failed plot is a RunPlotWarning
    # metrics.json last: its presence marks a complete run
    write_json(folder / "metrics.json", metrics)


def execute_task(task: Any) -> dict[str, Any]:
    """Runs a sweep task and writes its folder atomically; returns its metrics."""
    from priorguard.experiments.store import ResultStore

    spec = ExperimentSpec.from_toml(task.spec_toml)
    artifacts = run_experiment(spec, task.seed)
    store = ResultStore(task.store_root)
    with store.writing(task.run_id) as folder:
        write_run(folder, spec, task.seed, task.overrides, artifacts)
    return artifacts.metrics
