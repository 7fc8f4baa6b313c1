"""Planner benchmarks: overhead against raw mctx, throughput, and scaling slopes.

Run: ``.venv/bin/python benchmarks/bench_planners.py [--quick]``. Prints

1. MCTS through :func:`priorguard.planners.plan_mcts` vs raw ``mctx`` policies
   with the *same* ``recurrent_fn`` and root (B = 64 states, A = 16 actions,
   64 simulations, MuZero and Gumbel), as a time ratio (target <= 1.2x);
2. one-step planner throughput in (state, action, world) evaluations per
   second, with W a 2x64 tanh MLP and with W a random-Fourier-feature draw;
3. how cost grows with proposals K, depth (CEM horizon H) and worlds S: the
   slope of log(time) against log(size).

Ratios are measured in the same run, with the two contenders interleaved;
times are medians. float32 (JAX's default) throughout.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import mctx
import numpy as np

from priorguard.models.base import FunctionDraws
from priorguard.planners import (
    PlanningModels,
    UniformProposal,
    chain,
    epistemic_std_veto,
    lower_confidence_bound,
    make_recurrent_fn,
    make_search_root,
    plan_cem,
    plan_mcts,
    plan_one_step,
    value_drop_veto,
)

OBS_DIM = 8


# ----------------------------------------------------------------- models
def _mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    h = jnp.tanh(h @ params["w2"] + params["b2"])
    return h @ params["w3"]


def mlp_draws(key, num_worlds: int, in_dim: int, out_dim: int, width: int = 64, scale: float = 0.1) -> FunctionDraws:
    """S hand-made 2 x ``width`` tanh MLPs (random weights), as function draws."""
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    params = {
        "w1": jax.random.normal(k1, (num_worlds, in_dim, width)) / np.sqrt(in_dim),
        "b1": 0.1 * jax.random.normal(k2, (num_worlds, width)),
        "w2": jax.random.normal(k3, (num_worlds, width, width)) / np.sqrt(width),
        "b2": 0.1 * jax.random.normal(k4, (num_worlds, width)),
        "w3": scale * jax.random.normal(k5, (num_worlds, width, out_dim)) / np.sqrt(width),
    }
    return FunctionDraws(params=params, apply_fn=_mlp)


def _rff(params, x):
    features = jnp.cos(x @ params["omega"] + params["phase"]) * jnp.sqrt(2.0 / params["phase"].shape[-1])
    return features @ params["weights"]


def rff_draws(key, num_worlds: int, in_dim: int, out_dim: int, num_features: int = 256,
              lengthscale: float = 1.0, scale: float = 0.1) -> FunctionDraws:
    """S random-Fourier-feature draws of an RBF-kernel GP (pathwise-draw style)."""
    k1, k2, k3 = jax.random.split(key, 3)
    omega = jax.random.normal(k1, (in_dim, num_features)) / lengthscale
    phase = jax.random.uniform(k2, (num_features,), maxval=2 * np.pi)
    params = {
        "omega": jnp.broadcast_to(omega, (num_worlds, in_dim, num_features)),
        "phase": jnp.broadcast_to(phase, (num_worlds, num_features)),
        "weights": scale * jax.random.normal(k3, (num_worlds, num_features, out_dim)),
    }
    return FunctionDraws(params=params, apply_fn=_rff)


def discrete_models(key, num_worlds: int, num_actions: int, world: str = "mlp") -> PlanningModels:
    kw, kt, ki = jax.random.split(key, 3)
    make = mlp_draws if world == "mlp" else rff_draws
    return PlanningModels(
        world=make(kw, num_worlds, OBS_DIM + num_actions, OBS_DIM),
        terminal=mlp_draws(kt, num_worlds, 4, 1, width=32, scale=1.0),
        instrumental=mlp_draws(ki, num_worlds, 4, 1, width=32, scale=1.0),
        terminal_columns=(0, 1, 2, 3),
        instrumental_columns=(4, 5, 6, 7),
        num_actions=num_actions,
    )


def continuous_models(key, num_worlds: int, action_dim: int = 2) -> PlanningModels:
    kw, kt = jax.random.split(key)
    return PlanningModels(
        world=mlp_draws(kw, num_worlds, OBS_DIM + action_dim, OBS_DIM),
        terminal=mlp_draws(kt, num_worlds, 4, 1, width=32, scale=1.0),
        terminal_columns=(0, 1, 2, 3),
        action_low=-jnp.ones(action_dim),
        action_high=jnp.ones(action_dim),
    )


# ----------------------------------------------------------------- timing
def _run_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _median_time(fn: Callable[[], object], repeats: int, budget_s: float = 1.0) -> float:
    """Median over up to ``repeats`` runs after a warm-up, stopping once ``budget_s`` is spent."""
    jax.block_until_ready(fn())  # compile and warm up
    times = [_run_once(fn)]
    while len(times) < repeats and sum(times) < budget_s:
        times.append(_run_once(fn))
    return statistics.median(times)


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, budget_s: float = 2.0) -> dict[str, float]:
    """Medians of contenders run alternately (so load changes hit both alike)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    while not times or min(len(t) for t in times.values()) < repeats:
        for name, fn in fns.items():
            times[name].append(_run_once(fn))
        spent += sum(t[-1] for t in times.values())
        if spent > budget_s and min(len(t) for t in times.values()) >= 3:
            break
    return {name: statistics.median(t) for name, t in times.items()}


def _slope(sizes, times) -> float:
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


# ----------------------------------------------------------- 1. MCTS vs mctx
def bench_mcts_overhead(repeats: int) -> None:
    batch, num_actions, num_simulations = 64, 16, 64
    print(f"\n1. MCTS: priorguard.plan_mcts vs raw mctx, same recurrent_fn "
          f"(B={batch}, A={num_actions}, {num_simulations} simulations; ratio target <= 1.2x)")
    print(f"   {'policy':7s} {'worlds':>6s} {'veto':>5s} {'raw mctx ms':>12s} {'priorguard ms':>14s} "
          f"{'ratio':>6s} {'raw sims/s':>11s}")
    key = jax.random.key(0)
    obs = jax.random.normal(key, (batch, OBS_DIM))
    proposal = UniformProposal(num_actions)
    veto = chain(epistemic_std_veto(0.5), value_drop_veto(1.0), lower_confidence_bound(1.0))
    for num_worlds, rule in [(1, None), (2, veto)]:
        models = discrete_models(jax.random.key(1), num_worlds, num_actions)
        recurrent_fn = make_recurrent_fn(models, proposal, discount=0.99, fallback_action=0, veto=rule)
        # Raw mctx gets the same search problem, prebuilt: root, root invalid actions (the root vetoes).
        root, invalid, _, _, _ = make_search_root(models, proposal, None, obs, discount=0.99, fallback_action=0,
                                                  veto=rule)
        for policy in ["muzero", "gumbel"]:
            mctx_policy = mctx.muzero_policy if policy == "muzero" else mctx.gumbel_muzero_policy
            raw = jax.jit(functools.partial(mctx_policy, None, recurrent_fn=recurrent_fn,
                                            num_simulations=num_simulations))
            ours = eqx.filter_jit(functools.partial(plan_mcts, policy=policy, num_simulations=num_simulations,
                                                    fallback_action=0, veto=rule, discount=0.99))
            times = _interleaved({
                "raw": lambda raw=raw: raw(key, root, invalid_actions=invalid),
                "ours": lambda ours=ours, models=models: ours(models, proposal, None, key, obs),
            }, repeats)
            sims = num_simulations * batch * num_worlds / times["raw"]
            print(f"   {policy:7s} {num_worlds:6d} {'yes' if rule else 'no':>5s} {1e3 * times['raw']:12.1f} "
                  f"{1e3 * times['ours']:14.1f} {times['ours'] / times['raw']:5.2f}x {sims:11.0f}")


# ------------------------------------------------------ 2. one-step throughput
def bench_one_step_throughput(repeats: int) -> None:
    batch, num_actions, k, num_worlds = 256, 16, 16, 8
    print(f"\n2. one-step planner throughput (B={batch}, K={k}, S={num_worlds}, A={num_actions}; "
          f"evaluations = state x action x world)")
    obs = jax.random.normal(jax.random.key(2), (batch, OBS_DIM))
    proposal = UniformProposal(num_actions)
    veto = chain(epistemic_std_veto(0.5), value_drop_veto(1.0), lower_confidence_bound(1.0))
    for world in ["mlp", "rff"]:
        models = discrete_models(jax.random.key(3), num_worlds, num_actions, world=world)
        run = eqx.filter_jit(functools.partial(plan_one_step, num_candidates=k, fallback_action=0, veto=veto))
        seconds = _median_time(lambda: run(models, proposal, None, jax.random.key(4), obs), repeats)
        label = "2x64 tanh MLP W" if world == "mlp" else "RFF W (256 features)"
        print(f"   {label:22s} {1e3 * seconds:8.2f} ms/call  {batch * k * num_worlds / seconds:12.3e} evals/s")


# ------------------------------------------------------------- 3. scaling
def bench_scaling(repeats: int, quick: bool) -> None:
    print("\n3. cost growth (log-log slope of time against size; 1 = linear)")
    num_actions = 16
    proposal = UniformProposal(num_actions)
    obs = jax.random.normal(jax.random.key(5), (64, OBS_DIM))
    veto = chain(epistemic_std_veto(0.5), lower_confidence_bound(1.0))

    sizes = [4, 8, 16, 32, 64] if not quick else [4, 16, 64]
    models = discrete_models(jax.random.key(6), 8, 64)
    prop64 = UniformProposal(64)
    times = []
    for k in sizes:
        run = eqx.filter_jit(functools.partial(plan_one_step, num_candidates=k, fallback_action=0, veto=veto))
        times.append(_median_time(lambda: run(models, prop64, None, jax.random.key(7), obs), repeats))
    _report("one-step, proposals K", sizes, times)

    sizes = [2, 4, 8, 16, 32] if not quick else [2, 8, 32]
    times = []
    for s in sizes:
        models = discrete_models(jax.random.key(8), s, num_actions)
        run = eqx.filter_jit(functools.partial(plan_one_step, num_candidates=16, fallback_action=0, veto=veto))
        times.append(_median_time(lambda: run(models, proposal, None, jax.random.key(9), obs), repeats))
    _report("one-step, worlds S", sizes, times)

    sizes = [1, 2, 4, 8, 16] if not quick else [1, 4, 16]
    models = continuous_models(jax.random.key(10), 8)
    times = []
    for horizon in sizes:
        run = eqx.filter_jit(functools.partial(plan_cem, horizon=horizon, fallback_action=jnp.zeros(2), veto=veto,
                                               num_samples=64, num_elites=8, num_iterations=3))
        times.append(_median_time(lambda: run(models, jax.random.key(11), obs[:16]), repeats))
    _report("CEM, depth (horizon H)", sizes, times)


def _report(label: str, sizes, times) -> None:
    cells = "  ".join(f"{s}:{1e3 * t:.2f}ms" for s, t in zip(sizes, times))
    print(f"   {label:26s} slope {_slope(sizes, times):5.2f}   {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else 9
    start = time.perf_counter()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, mctx {mctx.__version__}")
    bench_mcts_overhead(repeats)
    bench_one_step_throughput(repeats)
    bench_scaling(repeats, args.quick)
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
