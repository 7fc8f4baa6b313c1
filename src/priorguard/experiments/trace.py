"""The anatomy of a decision: one episode of a run, decision by decision.

:func:`trace_episode` fits the run's models exactly as :class:`~.runner.Runner` does (same
spec, seed and keys), then plays the run's deploy (or train) batch with the run's own
planner and records, for one episode of the batch, what went into each decision:

- the observation's features and A's probability of each action (discrete actions);
- for every action, W's predicted next features (mean and spread across the sampled
  worlds), T and I there (mean and std across worlds) and the one-step value
  ``T + discount * I`` the veto checks, and whether the veto refused it;
- for MCTS, the searched root values (mean and std across worlds) and visit counts;
- the action taken, and whether it was the fallback.

The episode is the run's own (same keys, same batch), so its return is the one the run
scored. ``priorguard trace`` prints it and writes it as JSON and a figure.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from priorguard.experiments.context import Progress
from priorguard.experiments.evaluate import evaluate
from priorguard.experiments.runner import Runner
from priorguard.experiments.spec import ExperimentSpec
from priorguard.planners.mcts import plan_mcts
from priorguard.planners.worlds import PlanningModels, action_stats

__all__ = ["plot_trace", "trace_episode"]


@eqx.filter_jit
def _anatomy(models: PlanningModels, proposal: Any, params: Any, rule: Any, obs: Any, discount: float) -> dict:
    """Per-action statistics at one state ``obs [1, F]`` (discrete actions)."""
    na, nw = models.num_actions, models.num_worlds
    actions = jnp.arange(na, dtype=jnp.int32)
    rows = jnp.repeat(obs, na, axis=0)  # [A, F]
    nxt = models.next_state_all_worlds(rows, actions)  # [S, A, F]
    worlds = jnp.arange(nw)
    t = jax.vmap(models.terminal_value)(nxt, worlds)  # [S, A]
    i = jax.vmap(models.instrumental_value)(nxt, worlds)  # [S, A]
    stats = action_stats(models, obs, actions[None], discount=discount)
    vetoed = rule.veto(stats)[0] if rule is not None else jnp.zeros(na, bool)
    return {
        "a_prob": jax.nn.softmax(proposal.logits(params, obs)[0]),
        "next_mean": nxt.mean(0), "next_std": nxt.std(0),
        "t_mean": t.mean(0), "t_std": t.std(0), "i_mean": i.mean(0), "i_std": i.std(0),
        "value_mean": stats.mean[0], "value_std": stats.std[0], "vetoed": vetoed,
    }


@eqx.filter_jit
def _search(models: PlanningModels, proposal: Any, params: Any, rule: Any, key: Any, obs: Any, fallback: int,
            simulations: int, policy: str, discount: float, depth: int, considered: int) -> tuple[Any, Any, Any]:
    out = plan_mcts(models, proposal, params, key, obs, num_simulations=simulations, fallback_action=fallback,
                    veto=rule, policy=policy, discount=discount, max_depth=depth,
                    max_num_considered_actions=considered)
    return out.value_mean, out.value_std, out.visit_counts.sum(axis=0)


def _listed(x: Any) -> Any:
    return np.asarray(x).tolist()


def trace_episode(spec: ExperimentSpec, seed: int, *, split: str = "deploy", episode: int = 0,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Fits the run of ``spec`` at ``seed`` and records one of its episodes decision by decision.

    Args:
        spec: a resolved spec (its ``sweep`` is ignored).
        seed: the run's seed.
        split: ``"deploy"`` or ``"train"``: the batch the run plays there.
        episode: which episode of that batch (``0 .. data.deploy_episodes - 1``).

    Returns:
        ``{"features", "action_names", "decisions": [...], "return", "threshold", ...}``; each decision
        has ``t``, ``obs`` (features), ``action``, ``fallback`` and, for discrete actions, the
        per-action lists named in the module docstring.
    """
    if split not in ("deploy", "train"):
        raise ValueError(f"split must be 'deploy' or 'train', got {split!r}")
    episodes = spec.data.deploy_episodes
    if not 0 <= episode < episodes:
        raise ValueError(f"episode must be in 0 .. {episodes - 1} (data.deploy_episodes = {episodes}), got {episode}")
    runner = Runner(spec, seed, progress=progress)
    ctx, keys = runner.ctx, runner.keys()
    ag = runner.agent(keys)
    act = ctx.driver.actor(ag.models, ag.proposal, ag.proposal_params, ag.rule)
    p = spec.planner
    decisions: list[dict[str, Any]] = []
    done = [False]

    def recording(key: Any, obs: Any) -> Any:
        out = act(key, obs)
        if done[0]:
            return out
        action, _, vmask, fallback = (np.asarray(a) for a in out)
        row = jnp.asarray(obs[episode:episode + 1], jnp.float64)
        record: dict[str, Any] = {"t": len(decisions), "obs": _listed(obs[episode]), "action": _listed(action[episode]),
                                  "fallback": bool(fallback[episode]), "vetoed_candidates": _listed(vmask[episode])}
        if ctx.discrete:
            record.update({k: _listed(v) for k, v in _anatomy(ag.models, ag.proposal, ag.proposal_params, ag.rule,
                                                             row, ctx.discount).items()})
            if p.kind == "mcts":
                q, sd, visits = _search(ag.models, ag.proposal, ag.proposal_params, ag.rule, key,
                                        jnp.asarray(obs, jnp.float64), int(p.veto.fallback), p.simulations, p.policy,
                                        ctx.discount, p.depth, min(p.proposals, ctx.info.num_actions))
                record.update(search_mean=_listed(q[episode]), search_std=_listed(sd[episode]),
                              search_visits=_listed(visits[episode]))
        decisions.append(record)
        return out

    key = keys["deploy"] if split == "deploy" else keys["train"]
    abstain = p.veto.on_repeat == "abstain"
    result = evaluate(ctx.source, split, episodes, key, recording, abstain_on_repeat=abstain)
    ends = np.flatnonzero(np.asarray(result["decision_episode"]) == episode)
    decisions = decisions[: len(ends)]  # steps after the traced episode ended belong to the others
    info = ctx.info
    return {
        "experiment": spec.name, "seed": seed, "split": split, "episode": episode,
        "features": list(ctx.features),
        "action_names": list(info.action_names) if ctx.discrete else None,
        "planner": p.kind,
        "threshold": None if ag.calibration is None else ag.calibration.get("threshold"),
        "return": float(result["returns"][episode]),
        "abstained": bool(result["abstained"][episode]),
        "decisions": decisions,
    }


def plot_trace(trace: dict[str, Any], path: Any, *, feature: str | None = None) -> None:
    """The traced episode as a figure: per decision and action, T at W's predicted state
    (mean and std across worlds), the one-step value, vetoes and the action taken."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = trace["decisions"]
    names = trace["action_names"]
    if not ds or names is None:
        raise ValueError("plot_trace draws discrete-action traces with at least one decision")
    steps = np.arange(len(ds))
    feats = trace["features"]
    fi = feats.index(feature) if feature else 0
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    axes[0].plot(steps, [d["obs"][fi] for d in ds], "k.-")
    axes[0].set_ylabel(feats[fi])
    axes[0].set_title(f"{trace['experiment']} seed {trace['seed']}, {trace['split']} episode {trace['episode']}: "
                      f"return {trace['return']:.3g}")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(names)
    for a, name in enumerate(names):
        x = steps + (a - (len(names) - 1) / 2) * width
        c = colours[a % len(colours)]
        for ax, key in ((axes[1], "t"), (axes[2], "value")):
            m = np.asarray([d[f"{key}_mean"][a] for d in ds])
            s = np.asarray([d[f"{key}_std"][a] for d in ds])
            ax.errorbar(x, m, yerr=s, fmt="o", ms=3, color=c, label=name, capsize=0, lw=1)
            vetoed = np.asarray([d["vetoed"][a] for d in ds], bool)
            ax.plot(x[vetoed], m[vetoed], "x", color="red", ms=7)
    chosen = [int(np.asarray(d["action"]).ravel()[0]) for d in ds]
    for s_, a in zip(steps, chosen):
        axes[2].axvspan(s_ - 0.45, s_ + 0.45, color=colours[a % len(colours)], alpha=0.08)
    axes[1].set_ylabel("T at W's next state")
    axes[2].set_ylabel("T + discount * I")
    axes[2].set_xlabel("decision (shaded: the action taken; red x: vetoed)")
    axes[1].legend(ncol=len(names), fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
