"""The experiment runner: one run of a resolved spec with one seed, as named steps.

One run is one (resolved spec, seed). Every random choice flows from
``jax.random.key(seed)`` (and numpy generators seeded from it), so the same
spec and seed give the same metrics.

Steps (each in its module):
    1. **data** (:mod:`.data`): train-split episodes of the behaviour policy; a
       calibration fraction of episodes is held out.
    2. **fit** (:mod:`.assemble`): T on (each visited state, the rater's label), W on
       (state, action) -> state delta, D (when the spec has one) on (each visited
       state, whether the episode ended there).
    3. **assemble** (:mod:`.assemble`, :mod:`.instrumental`): function draws of the
       posteriors as the planner's models, A, and I fitted against A.
    4. **calibrate** (:mod:`.calibrate`): the veto rule, its epistemic-std threshold
       calibrated by split conformal prediction on the held-out episodes.
    5. **evaluate** (:mod:`.evaluate`): three arms -- A alone, A checked (A's draw unless
       the veto refuses it) and the planner searching with A as its prior (with and
       without vetoes) -- and the oracle on deploy-split episodes, and the planner on train-split episodes (for
       false vetoes), in lockstep batches, against the environment's ground truth.
    6. **score** (:mod:`.scoring`, :mod:`.instrumental`, :mod:`.audit`): the metrics of
       the registry (:mod:`priorguard.metrics`), I's calibration, the audit through W.
    7. **write** (:func:`write_run`): the run's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from priorguard.experiments.assemble import fit_models, planning_models, training_sets
from priorguard.experiments.audit import audit
from priorguard.experiments.calibrate import veto_rule
from priorguard.experiments.context import Progress, RunContext
from priorguard.experiments.data import Transitions, collect, seed_ints, with_measured_ranges
from priorguard.experiments.drivers import alone_actor
from priorguard.experiments.evaluate import evaluate, policy_actor
from priorguard.experiments.instrumental import TRUE_I_STREAM, instrumental_scores
from priorguard.experiments.probes import ood_scores, probe_states
from priorguard.experiments.scoring import calibration_metrics, score
from priorguard.experiments.spec import ExperimentSpec
from priorguard.models.base import Posterior
from priorguard.planners import veto as veto_lib

#: Folded into the deploy stream for the probe set of the OOD AUROC (a stream of its own,
#: leaving the others as they were).
PROBE_STREAM = 0x0D0B

#: The run's PRNG streams, one per step, in the order they are split from the seed's key.
STREAMS = ("data", "split", "t", "w", "i", "draws", "proposal", "calib", "deploy", "train", "alone", "targets")


@dataclass
class RunArtifacts:
    """Everything a run produces, before it is written to its folder."""

    metrics: dict[str, Any]
    posteriors: dict[str, Posterior]
    calibration: dict[str, Any] | None
    curves: dict[str, Any] = field(default_factory=dict)



@dataclass
class Agent:
    """What the run acts with: its data, the fitted models, A and the calibrated veto rule."""

    fit_data: Transitions
    cal_data: Transitions
    posteriors: dict[str, Posterior]
    train_states: np.ndarray
    models: Any
    proposal: Any
    proposal_params: Any
    rule: Any
    calibration: dict[str, Any] | None


class Runner:
    """One run of an experiment spec with one seed.

    Args:
        spec: a resolved spec (its ``sweep`` is ignored).
        seed: the run's seed.
        progress: called with a short label as each step starts.
    """

    def __init__(self, spec: ExperimentSpec, seed: int, *, progress: Progress | None = None):
        if not jax.config.jax_enable_x64:  # GP numerics in float32 lose the posterior (and the numbers differ)
            raise RuntimeError("a priorguard run needs float64: call priorguard.configure() before JAX is first "
                               "used (or jax.config.update('jax_enable_x64', True))")
        self.ctx = RunContext.create(spec, seed, progress)

    def keys(self) -> dict[str, Any]:
        """The run's PRNG streams, one per step, all from the seed."""
        return dict(zip(STREAMS, jax.random.split(jax.random.key(self.ctx.seed), len(STREAMS))))

    def train_data(self, keys: dict[str, Any]) -> tuple[Transitions, Transitions]:
        """The train split's logged episodes: ``(fit, calibration)``, split by episode."""
        spec = self.ctx.spec
        ctx = self.ctx
        data = collect(ctx.source, "train", spec.data.train_episodes, spec.data.behaviour, keys["data"])
        ctx.info = with_measured_ranges(ctx.info, ctx.source, data)  # ranges no one declared, from this data
        ctx.ranges = [ctx.info.feature_ranges[f] for f in ctx.features]
        if spec.data.rater_noise > 0:
            noise_rng = np.random.default_rng(seed_ints(keys["split"], 1)[0])
            data.rater = data.rater + spec.data.rater_noise * noise_rng.standard_normal(data.rater.shape)
        episodes = np.unique(data.episode)
        n_cal = max(1, int(round(spec.data.calibration_fraction * len(episodes))))
        perm = np.asarray(jax.random.permutation(keys["split"], episodes))
        is_cal = np.isin(data.episode, perm[:n_cal])
        return data.subset(~is_cal), data.subset(is_cal)

    def agent(self, keys: dict[str, Any]) -> Agent:
        """Steps 1 to 4: the train data, the fitted models, A and the calibrated veto rule."""
        ctx = self.ctx
        ctx.progress("collect train data")
        with ctx.timed("collect_s"):
            fit_data, cal_data = self.train_data(keys)

        posteriors, train_states = fit_models(ctx, fit_data, keys)
        models, proposal, proposal_params = planning_models(ctx, posteriors, fit_data, train_states, keys)

        ctx.progress("calibrate vetoes")
        rule, calibration = veto_rule(ctx, models, proposal, proposal_params, cal_data, keys["calib"])
        return Agent(fit_data, cal_data, posteriors, train_states, models, proposal, proposal_params, rule,
                     calibration)

    def run(self) -> RunArtifacts:
        ctx, spec = self.ctx, self.ctx.spec
        keys = self.keys()
        ag = self.agent(keys)
        cal_data, posteriors, train_states = ag.cal_data, ag.posteriors, ag.train_states
        models, proposal, proposal_params, rule, calibration = (ag.models, ag.proposal, ag.proposal_params, ag.rule,
                                                                ag.calibration)
        act = ctx.driver.actor(models, proposal, proposal_params, rule)
        # The same rule with its vetoes off: same scoring, same program (no second compile).
        act_no_veto = ctx.driver.actor(models, proposal, proposal_params, veto_lib.disarmed(rule))
        act_alone = alone_actor(proposal, proposal_params)
        act_checked = ctx.driver.checked_actor(models, proposal, proposal_params, rule)

        ctx.progress("plan on deploy split")
        env = ctx.source
        episodes = spec.data.deploy_episodes
        abstain = spec.planner.veto.on_repeat == "abstain"  # a veto loop asks for help
        with ctx.timed("plan_deploy_s"):
            deploy = evaluate(env, "deploy", episodes, keys["deploy"], act, abstain_on_repeat=abstain)
        deploy_nv = evaluate(env, "deploy", episodes, keys["deploy"], act_no_veto)
        alone = evaluate(env, "deploy", episodes, keys["deploy"], act_alone)
        checked = evaluate(env, "deploy", episodes, keys["deploy"], act_checked, abstain_on_repeat=abstain)
        oracle = (evaluate(env, "deploy", episodes, keys["deploy"], policy_actor(env, "oracle", keys["alone"]))
                  if "oracle" not in env.unavailable else None)
        ctx.progress("plan on train split")
        # as many episodes as on deploy: the same batch shape, so the planner compiled above is reused
        train = evaluate(env, "train", episodes, keys["train"], act, abstain_on_repeat=abstain)
        train_oracle = (evaluate(env, "train", episodes, keys["train"], policy_actor(env, "oracle", keys["alone"]))
                        if oracle is not None else None)

        ctx.progress("score")
        metrics = score(ctx, posteriors, cal_data, train_states, deploy, deploy_nv, alone, oracle, train,
                        checked=checked, train_oracle=train_oracle)
        if spec.instrumental is not None:
            metrics.update(instrumental_scores(ctx, posteriors["instrumental"], proposal, proposal_params,
                                               {"train": train, "deploy": deploy},
                                               jax.random.fold_in(keys["targets"], TRUE_I_STREAM)))
        if calibration is not None:
            metrics.update(calibration_metrics(calibration))
        # uncertainty on a fixed, seed-determined probe set (not on the states the planner visited)
        probes = probe_states(ctx, jax.random.fold_in(keys["deploy"], PROBE_STREAM))
        metrics.update(ood_scores(ctx, posteriors, train_states, cal_data, probes))
        audit_out: dict[str, Any] = {}
        if spec.audit.states > 0:
            ctx.progress("audit through W")
            audit_out = audit(ctx, models, proposal, proposal_params, rule, keys["alone"],
                              observed=np.concatenate([train_states, probes]))
            metrics.update({k: v for k, v in audit_out.items() if not isinstance(v, list | dict)})
        return RunArtifacts(metrics=metrics, posteriors=posteriors, calibration=calibration,
                            curves={"deploy_values": deploy["values"],
                                    **({"oracle_values": oracle["values"]} if oracle is not None else {}),
                                    "audit": audit_out})


def training_sets_of(spec: ExperimentSpec, seed: int, progress: Progress | None = None) -> dict[str, Any]:
    """What a run of ``spec`` with ``seed`` fits T, W and D to (role -> :class:`RoleData`), without
    fitting: the train split collected and split as the run does it."""
    runner = Runner(spec, seed, progress=progress)
    keys = runner.keys()
    runner.ctx.progress("collect the train split")
    fit_data, _ = runner.train_data(keys)
    return training_sets(runner.ctx, fit_data, keys)[0]


def run_experiment(spec: ExperimentSpec, seed: int, *, progress: Progress | None = None) -> RunArtifacts:
    """Runs one (spec, seed) in this process. See :class:`Runner`."""
    return Runner(spec, seed, progress=progress).run()


def write_run(folder: Any, spec: ExperimentSpec, seed: int, overrides: dict[str, Any],
              artifacts: RunArtifacts) -> None:
    """Writes a run's files into ``folder`` (a temporary folder of the store)."""
    from priorguard.analysis.diagnostics import write_datatree
    from priorguard.store import write_json

    (folder / "spec.toml").write_text(spec.to_toml(), encoding="utf-8")
    for role, post in artifacts.posteriors.items():
        write_datatree(post.to_datatree(), folder / f"{role}.nc")
    if artifacts.calibration is not None:
        write_json(folder / "calibration.json", artifacts.calibration)
    write_json(folder / "curves.json", {k: np.asarray(v).tolist() for k, v in artifacts.curves.items()})
    from priorguard.analysis.run_plots import write_run_plots

    metrics = {**artifacts.metrics, "seed": seed, "overrides": overrides, "experiment": spec.name,
               "env": spec.env_label}
    write_run_plots(folder, metrics=metrics)  # never raises; a failed plot is a RunPlotWarning
    # metrics.json last: its presence marks a complete run
    write_json(folder / "metrics.json", metrics)


def execute_task(task: Any) -> dict[str, Any]:
    """Runs a sweep task and writes its folder atomically; returns its metrics."""
    from priorguard.store import ResultStore

    spec = ExperimentSpec.from_toml(task.spec_toml)
    artifacts = run_experiment(spec, task.seed)
    store = ResultStore(task.store_root)
    with store.writing(task.run_id) as folder:
        write_run(folder, spec, task.seed, task.overrides, artifacts)
    return artifacts.metrics
