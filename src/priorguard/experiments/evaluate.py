"""The evaluate step: episodes of the real environment in lockstep with an actor, scored with ground truth."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from priorguard.envs.source import EnvSource, as_source
from priorguard.experiments.data import seed_ints
from priorguard.experiments.drivers import Actor


def policy_actor(source: EnvSource | str, name: str, key: Any) -> Actor:
    """One of the source's named policies as an actor over a batch of observations (numpy).

    It is called with the episodes' environments as ``envs`` (a policy may read them, e.g. an oracle).
    """
    policy = as_source(source).policy(name)
    rng = np.random.default_rng(seed_ints(key, 1)[0])

    def act(_key, obs, envs):
        actions = np.asarray([policy(o, rng, env) for o, env in zip(np.asarray(obs), envs)])
        cands = actions[:, None]
        return actions, cands, np.zeros(cands.shape[:2], bool), np.zeros(len(actions), bool)

    act.is_numpy = True  # type: ignore[attr-defined]
    act.needs_envs = True  # type: ignore[attr-defined]
    return act


def evaluate(source: EnvSource | str, split: str, episodes: int, key: Any, act: Actor, *,
             abstain_on_repeat: bool = False) -> dict[str, Any]:
    """Runs ``episodes`` episodes in lockstep with an actor, scoring with ground truth.

    The actor is called once per time step on the whole batch (finished episodes
    keep their last observation and their actions are ignored), so a jitted
    planner compiles once. Each candidate action is checked against the true
    dynamics for whether it would have been catastrophic.

    A *veto loop* is a decision where every candidate was vetoed (the fallback)
    at an observation where the episode had already fallen back before: the
    agent was refused there, left, and came back. Each is counted; with
    ``abstain_on_repeat`` the agent abstains there instead (asks for help): the
    episode ends before the step and is counted as abstained.

    Returns:
        Per-episode ``returns`` (sum of true terminal values), ``rater_returns`` (sum of the
        rater's labels), ``catastrophes`` and ``initial_obs``; for each outcome flag the dynamics
        declare, under its key, whether the episode reached a state where it was set; counts of
        candidates, vetoes and would-be catastrophes; visited states, their rater labels,
        whether the episode ended in them (and their hidden ``true_states``, None where the source has
        no true state), and the transitions
        taken; per episode ``veto_repeats`` (veto loops) and ``abstained``; and one row per
        decision (``decision_episode [M]``, ``decision_obs [M, F]``, ``decision_candidates
        [M, K...]``, ``decision_vetoed [M, K]``, ``decision_catastrophic [M, K]``,
        ``decision_fallback [M]``), the pairs a closed-loop veto calibration scores.
    """
    source = as_source(source)
    seeds = seed_ints(jax.random.fold_in(key, 0), episodes)
    probe_rng = np.random.default_rng(seeds[0] + 1)
    envs = [source.make(split) for _ in range(episodes)]
    obs = np.stack([env.reset(s) for env, s in zip(envs, seeds)]).astype(np.float64)
    initial_obs = obs.copy()
    active = np.ones(episodes, bool)
    returns = np.zeros(episodes)
    rater_returns = np.zeros(episodes)
    catastrophes = np.zeros(episodes, bool)
    flags = {flag.key: np.zeros(episodes, bool) for flag in source.info.outcome_flags}
    repeats = np.zeros(episodes, np.int64)
    abstained = np.zeros(episodes, bool)
    refused: list[set[bytes]] = [set() for _ in range(episodes)]  # observations each episode fell back at
    decisions: dict[str, list[Any]] = {k: [] for k in ("episode", "obs", "candidates", "vetoed", "catastrophic",
                                                       "fallback")}
    counts = dict(candidates=0, vetoed=0, vetoed_catastrophic=0, catastrophic_candidates=0, fallbacks=0,
                  decisions=0)
    checked = True
    states, true_states, rater, obs_taken, actions_taken, values, ended = [], [], [], [], [], [], []
    discrete = source.info.num_actions is not None
    horizon = envs[0].horizon
    step_key = jax.random.fold_in(key, 1)
    for t in range(horizon):
        if not active.any():
            break
        step_in = jax.random.fold_in(step_key, t)
        out = act(step_in, obs, envs) if getattr(act, "needs_envs", False) else act(step_in, obs)
        action, cands, vmask, fallback = (np.asarray(a) for a in out)
        step_values = np.zeros(episodes)
        for i in np.flatnonzero(active):
            env = envs[i]
            cat = env.catastrophic(cands[i], probe_rng)
            if cat is None:
                checked, cat = False, np.zeros(cands.shape[1], bool)
            counts["candidates"] += cands.shape[1]
            counts["vetoed"] += int(vmask[i].sum())
            counts["vetoed_catastrophic"] += int((vmask[i] & cat).sum())
            counts["catastrophic_candidates"] += int(cat.sum())
            counts["fallbacks"] += int(fallback[i])
            counts["decisions"] += 1
            for name, value in (("episode", i), ("obs", obs[i].copy()), ("candidates", cands[i]),
                                ("vetoed", vmask[i]), ("catastrophic", cat), ("fallback", bool(fallback[i]))):
                decisions[name].append(value)
            if fallback[i]:
                here = obs[i].tobytes()
                if here in refused[i]:  # refused here before, and back again: a veto loop
                    repeats[i] += 1
                    if abstain_on_repeat:
                        abstained[i], active[i] = True, False
                        continue
                refused[i].add(here)
            a = action[i]
            a = int(a) if discrete else np.asarray(a, np.float32).reshape(-1)
            step = env.step(a)
            obs_taken.append(obs[i].copy())
            actions_taken.append(a)
            states.append(step.obs)
            hidden = env.hidden_state()
            if hidden is not None:
                true_states.append(hidden)
            ended.append(step.terminated)
            rater.append(step.rater)
            returns[i] += step.value
            rater_returns[i] += step.rater
            step_values[i] = step.value
            catastrophes[i] |= step.catastrophe
            for flag_key, seen in flags.items():
                seen[i] |= step.flags[flag_key]
            obs[i] = step.obs
            if step.terminated or step.truncated:
                active[i] = False
        values.append(step_values)
    width = obs.shape[1]
    return {
        "returns": returns,
        "rater_returns": rater_returns,
        "catastrophes": catastrophes,
        **flags,
        "initial_obs": initial_obs,
        "veto_repeats": repeats,
        "abstained": abstained,
        **{k: float(v) for k, v in counts.items()},
        "candidates_checked": checked,
        **{f"decision_{k}": np.asarray(v) for k, v in decisions.items()},
        "states": np.asarray(states, np.float64).reshape(-1, width),
        "true_states": (np.stack(true_states).astype(np.float32)
                        if true_states and len(true_states) == len(states) else None),
        "obs": np.asarray(obs_taken, np.float64).reshape(-1, width),
        "actions": np.asarray(actions_taken),
        "rater": np.asarray(rater, np.float64),
        "ended": np.asarray(ended, bool),
        "values": np.asarray(values),
    }
