"""Peak resident memory of `priorguard run` per shipped experiment (first sweep point, one seed).

Each run is a fresh process (`python -m priorguard.cli run NAME --seed 0 --out TMP`, the
persistent compilation cache as a user has it), and its peak RSS is the child's
``ru_maxrss``. The goal (issue: lean and quick to start) is <= 2 GB for every shipped
experiment; the baseline in the same run is a bare interpreter that imports jax, numpyro and
priorguard's models (what any run holds before it does anything). Repeated; median and range.

With ``--sweep`` it runs each experiment's whole sweep on 2 workers instead
(``priorguard sweep NAME --workers 2``) and reports each worker's peak, sampled from
``/proc`` every 0.1 s (Linux): what a worker holds grows with the runs before it
unless it lets go of their compiled programs and freed heap between runs.

Usage::

    python benchmarks/bench_memory.py [--repeats 1] [--sweep] [names...]
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


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def sweep_worker_peaks(name: str) -> tuple[list[float], float]:
    """Peak RSS (GB) of each process of a 2-worker sweep but the parent (the workers, largest
    first), sampled every 0.1 s, and the sweep's wall time."""
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "priorguard.cli", "sweep", name, "--workers", "2",
                                 "--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak: dict[int, float] = {}
        while proc.poll() is None:
            for pid in _children(proc.pid):
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        peak[pid] = max(peak.get(pid, 0.0), int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30)
                except (OSError, ValueError):
                    continue
            time.sleep(0.1)
        if proc.returncode != 0:
            raise RuntimeError(f"priorguard sweep {name} exited with {proc.returncode}")
        return sorted(peak.values(), reverse=True)[:2], time.perf_counter() - t


def main_sweep(names: list[str], repeats: int) -> None:
    print(f"{'experiment':22s} {'worker peak GB (median of the larger)':>38s} {'range':>13s} {'wall s':>7s}"
          f"  goal <= {GOAL_GB} GB per worker")
    for name in names:
        peaks, walls = [], []
        for _ in range(repeats):
            workers, wall = sweep_worker_peaks(name)
            peaks.append(workers[0])
            walls.append(wall)
        med = statistics.median(peaks)
        print(f"{name:22s} {med:38.2f} {min(peaks):6.2f}-{max(peaks):<6.2f} {statistics.median(walls):7.0f}"
              f"  {'ok' if med <= GOAL_GB else 'OVER'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="each experiment's sweep on 2 workers")
    parser.add_argument("names", nargs="*", default=SHIPPED)
    args = parser.parse_args()
    if args.sweep:
        return main_sweep(args.names, args.repeats)
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
