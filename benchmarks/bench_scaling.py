"""How a run's cost grows with its training data, once ``data.max_points`` no longer caps it.

Runs ``priorguard run NAME --seed 0`` with ``data.max_points`` lifted at ``E`` and at
``factor * E`` training episodes (fresh processes, the persistent compilation cache as a
user has it) and prints the ratios of wall time and of peak resident memory, against the
goal (issue: lean and quick to start): 4x the episodes for <= 4.5x the time and <= 1.5x the
memory. Data gathered by acting revisit the same states, so work after the fit must grow
with the unique states, not with the rows. Repeated; median and range.

Usage::

    python benchmarks/bench_scaling.py [--name coin-shift] [--episodes 100] [--factor 4] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import measured  # noqa: E402

GOALS = {"wall": 4.5, "peak": 1.5}


def one(name: str, episodes: int) -> tuple[float, float, dict[str, float]]:
    """``(peak GB, wall s, the run's own timings)`` of one run at ``episodes`` training episodes."""
    with tempfile.TemporaryDirectory() as out:
        peak, wall = measured([sys.executable, "-m", "priorguard.cli", "run", name, "--seed", "0", "--out", out,
                               "--set", "data.max_points=10000000", "--set", f"data.train_episodes={episodes}"])
        (metrics,) = Path(out).glob("runs/*/metrics.json")
        timings = {k: v for k, v in json.loads(metrics.read_text()).items() if k.endswith("_s")}
    return peak, wall, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="coin-shift")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {"wall": [], "peak": []}
    for r in range(args.repeats):
        small = one(args.name, args.episodes)
        large = one(args.name, args.factor * args.episodes)
        for label, (peak, wall, t) in (("x1", small), (f"x{args.factor}", large)):
            phases = ", ".join(f"{k} {v:.1f}" for k, v in sorted(t.items()))
            print(f"repeat {r} {label}: wall {wall:.1f} s, peak {peak:.2f} GB ({phases})", flush=True)
        ratios["wall"].append(large[1] / small[1])
        ratios["peak"].append(large[0] / small[0])
    for key, values in ratios.items():
        med = statistics.median(values)
        print(f"{args.name}: {args.factor}x the training episodes -> {key} x{med:.2f} "
              f"(range {min(values):.2f} .. {max(values):.2f}; goal <= {GOALS[key]}x:"
              f" {'met' if med <= GOALS[key] else 'not met'})")


if __name__ == "__main__":
    main()
