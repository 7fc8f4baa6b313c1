"""Benchmark any-gymnasium environments through priorguard: collection speed and planner decisions/s.

1. Collection: steps/s of ``priorguard.experiments.data.collect`` (features, rater, truth per step)
   on MiniGrid-DistShift1 with the random policy, against a bare loop over the same env with
   random actions (the baseline, measured in the same run). Goal: >= 0.8x.
2. Planning: decisions/s of the one-step planner (the same settings) on MiniGrid-DistShift2 and
   on priorguard/CoinShift-v1 (deploy), compiled, through ``evaluate``.

Each is repeated; the median and range are printed.

Usage::

    python benchmarks/bench_gym_source.py [--repeats 3] [--episodes 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium
import jax
import numpy as np

from priorguard._runtime import configure


def bare_steps_per_second(env_id: str, episodes: int, seed: int = 0) -> float:
    env = gymnasium.make(env_id, max_steps=40)
    rng = np.random.default_rng(seed)
    steps, start = 0, time.perf_counter()
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            done = terminated or truncated
            steps += 1
    return steps / (time.perf_counter() - start)


def collect_steps_per_second(source, episodes: int) -> float:
    from priorguard.experiments.data import collect

    start = time.perf_counter()
    data = collect(source, "train", episodes, "random", jax.random.key(0))
    return len(data.episode) / (time.perf_counter() - start)


def decisions_per_second(spec, episodes: int, repeats: int) -> list[float]:
    """The compiled planner's decisions/s on deploy episodes, ``repeats`` times (one agent, fitted once)."""
    from priorguard.experiments.evaluate import evaluate
    from priorguard.experiments.runner import Runner

    runner = Runner(spec, 0)
    ag = runner.agent(runner.keys())
    act = runner.ctx.driver.actor(ag.models, ag.proposal, ag.proposal_params, ag.rule)
    evaluate(runner.ctx.source, "deploy", episodes, jax.random.key(1), act)  # compile
    out = []
    for r in range(repeats):
        start = time.perf_counter()
        ev = evaluate(runner.ctx.source, "deploy", episodes, jax.random.key(2 + r), act)
        out.append(ev["decisions"] / (time.perf_counter() - start))
    return out


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f} .. {max(values):,.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=200)
    args = parser.parse_args()
    configure()
    from priorguard.experiments.catalog import load_spec

    mg = load_spec("minigrid-distshift")
    source = mg.source()
    bare, ours = [], []
    for r in range(args.repeats):
        bare.append(bare_steps_per_second("MiniGrid-DistShift1-v0", args.episodes, seed=r))
        ours.append(collect_steps_per_second(source, args.episodes))
    ratios = [o / b for o, b in zip(ours, bare)]
    print(f"jax {jax.__version__}, gymnasium {gymnasium.__version__}; {args.repeats} repeats, median [range]\n")
    print("| collection (MiniGrid-DistShift1, random actions) | steps/s | ratio |")
    print("|---|---:|---:|")
    print(f"| bare gymnasium loop (baseline) | {summary(bare)} | 1.00 |")
    print(f"| priorguard collect (features, rater, truth) | {summary(ours)} |"
          f" {statistics.median(ratios):.2f} [{min(ratios):.2f} .. {max(ratios):.2f}] |")

    small = {"data.train_episodes": 20, "data.deploy_episodes": 10, "planner.veto.enabled": True}
    coin = load_spec("coin-shift")
    rows = {}
    for label, spec in (("MiniGrid-DistShift2 (one-step, A checked)", mg),
                        ("priorguard/CoinShift-v1 (same planner)", coin)):
        resolved = spec.model_copy(update={"sweep": {}}).with_overrides({
            **small, "planner.kind": "one_step", "planner.proposals": 1, "planner.function_samples": 8,
            "planner.proposal.kind": "learned"})
        rows[label] = decisions_per_second(resolved, 10, args.repeats)
    print("\n| planner decisions/s (deploy, compiled) | decisions/s |")
    print("|---|---:|")
    for label, values in rows.items():
        print(f"| {label} | {summary(values)} |")


if __name__ == "__main__":
    main()
