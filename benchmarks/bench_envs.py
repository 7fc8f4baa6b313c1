"""Benchmark the environment suite: stepping speed, and the reference policies' scores.

Prints two markdown tables:

1. Speed. ``gym steps/s``: ``env.step`` through ``gymnasium.make`` (random actions,
   resets included), with the ratio to a gymnasium baseline measured in the same run
   (``CliffWalking-v1`` for the discrete environments, ``Pendulum-v1`` for the
   continuous one). ``jax batch steps/s``: ``EnvModel.step`` jitted and vmapped over a
   batch, scanned over steps. ``jax call us``: one call of ``jax.jit(model.step)`` on a
   single state (dispatch cost: why gymnasium steps with Python scalars instead).
2. Scores. Mean true return (sum of ``info["true_terminal_value"]`` over an
   episode) +- its standard error, and catastrophe rate, of the oracle, proxy and
   random policies on both splits.

Usage::

    python benchmarks/bench_envs.py [--episodes 200] [--seconds 1.0] [--render]
"""

from __future__ import annotations

import argparse
import time

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

import priorguard.envs as pe

BASELINES = {"discrete": "CliffWalking-v1", "continuous": "Pendulum-v1"}


def gym_steps_per_second(env: gymnasium.Env, seconds: float, seed: int = 0) -> float:
    """Steps per second of ``env.step`` with random actions, resetting when episodes end."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(2000)]
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def jax_batch_steps_per_second(model: pe.EnvModel, *, batch: int = 4096, length: int = 100) -> float:
    """State transitions per second of a jitted, vmapped, scanned ``EnvModel.step``."""
    key_reset, key_actions = jax.random.split(jax.random.key(0))
    states = jax.vmap(model.reset)(jax.random.split(key_reset, batch))
    if model.num_actions is None:
        actions = jax.random.uniform(key_actions, (length, batch, 1), jnp.float32, -2.0, 2.0)
    else:
        actions = jax.random.randint(key_actions, (length, batch), 0, model.num_actions)
    step = jax.vmap(model.step)
    keys = jax.random.split(jax.random.key(1), batch)

    @jax.jit
    def rollout(states, actions):
        def body(states, action):
            return step(states, action, keys), None

        return jax.lax.scan(body, states, actions)[0]

    rollout(states, actions).block_until_ready()  # compile
    start = time.perf_counter()
    rollout(states, actions).block_until_ready()
    return batch * length / (time.perf_counter() - start)


def jax_call_microseconds(model: pe.EnvModel, calls: int = 300) -> float:
    """Microseconds per call of ``jax.jit(model.step)`` on one state."""
    step = jax.jit(model.step)
    state = model.reset(jax.random.key(0))
    action = jnp.zeros((1,), jnp.float32) if model.num_actions is None else jnp.int32(0)
    key = jax.random.key(1)
    step(state, action, key).block_until_ready()
    start = time.perf_counter()
    for _ in range(calls):
        state = step(state, action, key)
    state.block_until_ready()
    return (time.perf_counter() - start) / calls * 1e6


def score(
    env_id: str, split: str, policy_name: str, episodes: int, seed: int = 0
) -> tuple[float, float, float]:
    """Mean true return, its standard error, and the catastrophe rate of a reference policy."""
    env = gymnasium.make(env_id, split=split)
    policy = pe.reference_policies(env_id)[policy_name]
    rng = np.random.default_rng(seed)
    returns, catastrophes = [], []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        total, catastrophe = 0.0, False
        while True:
            obs, _, terminated, truncated, info = env.step(policy(obs, rng))
            total += info["true_terminal_value"]
            catastrophe |= info["catastrophe"]
            if terminated or truncated:
                break
        returns.append(total)
        catastrophes.append(catastrophe)
        obs, _ = env.reset()
    returns = np.asarray(returns)
    stderr = returns.std(ddof=1) / np.sqrt(len(returns))
    return float(returns.mean()), float(stderr), float(np.mean(catastrophes))


def speed_table(seconds: float) -> list[str]:
    """Markdown rows of the speed table."""
    baseline = {
        kind: gym_steps_per_second(gymnasium.make(env_id), seconds) for kind, env_id in BASELINES.items()
    }
    rows = [
        "| env | gym steps/s | vs gymnasium baseline | jax batch steps/s | jax call us |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, env_id in BASELINES.items():
        rows.append(f"| {env_id} (baseline) | {baseline[kind]:,.0f} | 1.00 | | |")
    for env_id in pe.list_envs():
        kind = pe.env_info(env_id).action_kind
        rate = gym_steps_per_second(gymnasium.make(env_id, split="deploy"), seconds)
        model = pe.jax_model(env_id, "deploy")
        rows.append(
            f"| {env_id} | {rate:,.0f} | {rate / baseline[kind]:.2f} x {BASELINES[kind]} "
            f"| {jax_batch_steps_per_second(model):,.0f} | {jax_call_microseconds(model):.0f} |"
        )
    return rows


def score_table(episodes: int) -> list[str]:
    """Markdown rows of the score table."""
    rows = [
        "| env | split | oracle return | proxy return | random return "
        "| oracle cat. | proxy cat. | random cat. | episodes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for env_id in pe.list_envs():
        n = max(episodes // 4, 10) if pe.env_info(env_id).horizon >= 200 else episodes
        for split in ("train", "deploy"):
            results = [score(env_id, split, name, n) for name in ("oracle", "proxy", "random")]
            returns = " | ".join(f"{mean:.2f} +- {stderr:.2f}" for mean, stderr, _ in results)
            catastrophes = " | ".join(f"{rate:.2f}" for _, _, rate in results)
            rows.append(f"| {env_id} | {split} | {returns} | {catastrophes} | {n} |")
    return rows


def renders() -> list[str]:
    """The ``render_mode="ansi"`` picture of every environment after a seeded deploy reset."""
    lines = []
    for env_id in pe.list_envs():
        env = gymnasium.make(env_id, split="deploy", render_mode="ansi")
        env.reset(seed=1)
        lines += [f"{env_id} (deploy, seed 1):", "```", env.render(), "```", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--episodes", type=int, default=200, help="episodes per score (a quarter for the pendulum)"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per gymnasium speed measurement")
    parser.add_argument("--render", action="store_true", help="also print each environment's text rendering")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, gymnasium {gymnasium.__version__}\n")
    print("\n".join(speed_table(args.seconds)), end="\n\n")
    print("\n".join(score_table(args.episodes)))
    if args.render:
        print()
        print("\n".join(renders()))


if __name__ == "__main__":
    main()
