"""Peak resident memory of `priorguard run` per shipped experiment (first sweep point, one seed).

Each run is a fresh process (`python -m priorguard.cli run NAME --seed 0 --out TMP`, the
persistent compilation cache as a user has it), and its peak RSS is the child's
``ru_maxrss``. The goal (issue: lean and quick to start) is <= 2 GB for every shipped
experiment; the baseline in the same run is a bare interpreter that imports jax, numpyro and
priorguard's models (what any run holds before it does anything). Repeated; median and range.

Usage::

    python benchmarks/bench_memory.py [--repeats 1] [names...]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))
GOAL_GB = 2.0


def measured(cmd: list[str]) -> tuple[float, float]:
    """Runs ``cmd`` under a helper process, so that each measurement's maximum is its own."""
    helper = ("import resource,subprocess,sys,time,os;t=time.perf_counter();"
              "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/2**20, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", helper, *cmd], check=True, capture_output=True, text=True)
    peak, wall = out.stdout.split()
    return float(peak), float(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("names", nargs="*", default=SHIPPED)
    args = parser.parse_args()
    base_cmd = [sys.executable, "-c", "import jax, numpyro, priorguard.models.gp, priorguard.models.bnn"]
    base = [measured(base_cmd)[0] for _ in range(args.repeats)]
    print(f"baseline (interpreter + jax + numpyro + models): {statistics.median(base):.2f} GB")
    print(f"{'experiment':22s} {'peak RSS GB (median)':>21s} {'range':>13s} {'x baseline':>10s} {'wall s':>7s}  goal <= {GOAL_GB} GB")
    for name in args.names:
        peaks, walls = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                p, w = measured([sys.executable, "-m", "priorguard.cli", "run", name, "--seed", "0", "--out", out])
            peaks.append(p)
            walls.append(w)
        med = statistics.median(peaks)
        print(f"{name:22s} {med:21.2f} {min(peaks):6.2f}-{max(peaks):<6.2f} {med / statistics.median(base):10.1f}"
              f" {statistics.median(walls):7.0f}  {'ok' if med <= GOAL_GB else 'OVER'}", flush=True)


if __name__ == "__main__":
    main()
