"""The evaluate step: episodes of the real environment in lockstep with an actor, scored with ground truth."""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import numpy as np

from priorguard.envs import reference_policies
from priorguard.experiments.data import seed_ints
from priorguard.experiments.drivers import Actor


def policy_actor(env_id: str, name: str, key: Any) -> Actor:
    """A reference policy as an actor over a batch of observations (numpy)."""
    policy = reference_policies(env_id)[name]
    rng = np.random.default_rng(seed_ints(key, 1)[0])

    def act(_key, obs):
        actions = np.asarray([policy(o, rng) for o in np.asarray(obs)])
        cands = actions[:, None]
        return actions, cands, np.zeros(cands.shape[:2], bool), np.zeros(len(actions), bool)

    act.is_numpy = True  # type: ignore[attr-defined]
    return act


def evaluate(env_id: str, split: str, episodes: int, key: Any, act: Actor, *,
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
        whether the episode ended in them (and their hidden ``true_states``), and the transitions
        taken; per episode ``veto_repeats`` (veto loops) and ``abstained``; and one row per
        decision (``decision_episode [M]``, ``decision_obs [M, F]``, ``decision_candidates
        [M, K...]``, ``decision_vetoed [M, K]``, ``decision_catastrophic [M, K]``,
        ``decision_fallback [M]``), the pairs a closed-loop veto calibration scores.
    """
    seeds = seed_ints(jax.random.fold_in(key, 0), episodes)
    probe_rng = np.random.default_rng(seeds[0] + 1)
    envs = [gymnasium.make(env_id, split=split).unwrapped for _ in range(episodes)]
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)]).astype(np.float64)
    initial_obs = obs.copy()
    active = np.ones(episodes, bool)
    returns = np.zeros(episodes)
    rater_returns = np.zeros(episodes)
    catastrophes = np.zeros(episodes, bool)
    flags = {flag.key: np.zeros(episodes, bool) for flag in envs[0].dynamics.outcome_flags}
    repeats = np.zeros(episodes, np.int64)
    abstained = np.zeros(episodes, bool)
    refused: list[set[bytes]] = [set() for _ in range(episodes)]  # observations each episode fell back at
    decisions: dict[str, list[Any]] = {k: [] for k in ("episode", "obs", "candidates", "vetoed", "catastrophic",
                                                       "fallback")}
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
            for flag_key, seen in flags.items():
                seen[i] |= info[flag_key]
            obs[i] = nxt
            if terminated or truncated:
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
        **{f"decision_{k}": np.asarray(v) for k, v in decisions.items()},
        "states": np.asarray(states, np.float64).reshape(-1, width),
        "true_states": np.asarray(true_states, np.float32).reshape(len(true_states), envs[0].dynamics.state_size),
        "obs": np.asarray(obs_taken, np.float64).reshape(-1, width),
        "actions": np.asarray(actions_taken),
        "rater": np.asarray(rater, np.float64),
        "ended": np.asarray(ended, bool),
        "values": np.asarray(values),
    }

