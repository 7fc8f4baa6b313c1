"""Experiment-pipeline benchmarks: ratios measured in this run.

1. Flagship wall time: ``priorguard sweep coin-shift --workers 2`` then
   ``priorguard report``, exactly what ``make demo`` runs, in fresh processes
   with an empty persistent compilation cache (compilation included).
   Target: <= 180 s on 2 cores.
2. Sweep parallelism: the same 4-run sweep with ``--workers 1`` and
   ``--workers 2`` (persistent cache warmed first, so both measure run time,
   not first-time compilation). Target: speed-up >= 1.7x.
3. Compiled-code reuse: two runs of the same shapes (seeds 0 and 1) in one
   process, first against an empty persistent cache. Target: the second run
   >= 3x faster than the first.

Run: ``.venv/bin/python benchmarks/bench_experiments.py [--skip-flagship]``
(about 10 minutes on 2 cores). Timings are single measurements: run on a
quiet machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG = [sys.executable, "-m", "priorguard.cli"]
# A smaller spec for the parallelism measurement: 2 sweep points x 2 seeds of the flagship.
SMALL = ["--set", "data.train_episodes=60", "--set", "data.deploy_episodes=10", "--set", "audit.states=200",
         "--set", "world.inference.steps=400"]


def _child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str], env: dict[str, str], cpu: list[float] | None = None) -> float:
    """Wall seconds of ``cmd``; appends its CPU seconds (all its processes) to ``cpu`` if given."""
    c0, t0 = _child_cpu_seconds(), time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    if cpu is not None:
        cpu.append(_child_cpu_seconds() - c0)
    return dt


def _row(label: str, value: str, target: str, ok: bool | None) -> None:
    verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
    print(f"  {label:<58s} {value:>10s}  {target:>8s}  {verdict}", flush=True)


def flagship(tmp: Path) -> None:
    env = {**os.environ, "PRIORGUARD_CACHE": str(tmp / "cache-flagship")}
    store = tmp / "flagship"
    sweep = _timed(PG + ["sweep", "coin-shift", "--workers", "2", "--out", str(store)], env)
    report = _timed(PG + ["report", str(store)], env)
    print("[1] flagship: priorguard sweep coin-shift --workers 2 + report (empty compilation cache)")
    _row("sweep (s)", f"{sweep:.1f}", "", None)
    _row("report (s)", f"{report:.1f}", "", None)
    _row("flagship wall time (s)", f"{sweep + report:.1f}", "<= 180", sweep + report <= 180)


def parallel(tmp: Path) -> None:
    env = {**os.environ, "PRIORGUARD_CACHE": str(tmp / "cache-parallel")}
    _timed(PG + ["sweep", "coin-shift", "--workers", "2", "--out", str(tmp / "warm")] + SMALL, env)
    cpu: list[float] = []
    one = _timed(PG + ["sweep", "coin-shift", "--workers", "1", "--out", str(tmp / "w1")] + SMALL, env, cpu)
    two = _timed(PG + ["sweep", "coin-shift", "--workers", "2", "--out", str(tmp / "w2")] + SMALL, env, cpu)
    cores = len(os.sched_getaffinity(0))
    print("[2] 4-run sweep (2 points x 2 seeds, reduced sizes), warm persistent cache")
    _row("1 worker (s)", f"{one:.1f}", "", None)
    _row("2 workers (s)", f"{two:.1f}", "", None)
    # one worker already runs XLA on every core; 2 workers can at best fill the cores it leaves idle
    _row("cores busy, 1 worker (CPU s / wall s)", f"{cpu[0] / one:.2f}", "", None)
    _row("cores busy, 2 workers", f"{cpu[1] / two:.2f}", "", None)
    _row(f"ceiling on {cores} cores: {cores} / cores busy with 1 worker", f"{cores * one / cpu[0]:.2f}x", "", None)
    _row("speed-up, 2 workers vs 1", f"{one / two:.2f}x", ">= 1.7x", one / two >= 1.7)


_SECOND_RUN = """
import json, sys, time
from priorguard import _runtime
_runtime.configure()
from priorguard.experiments.runner import run_experiment
from priorguard.priors.spec import load_spec
spec = load_spec("coin-shift").model_copy(update={"sweep": {}})
times = []
for seed in (0, 1):
    t0 = time.perf_counter()
    run_experiment(spec, seed)
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def second_run(tmp: Path) -> None:
    env = {**os.environ, "PRIORGUARD_CACHE": str(tmp / "cache-second")}
    r = subprocess.run([sys.executable, "-c", _SECOND_RUN], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"second-run benchmark failed:\n{r.stderr[-3000:]}")
    first, second = (float(v) for v in r.stdout.strip().splitlines()[-1].strip("[]").split(","))
    print("[3] two coin-shift runs of the same shapes in one process (seed 0, then seed 1)")
    _row("first run, empty compilation cache (s)", f"{first:.1f}", "", None)
    _row("second run (s)", f"{second:.1f}", "", None)
    _row("first / second", f"{first / second:.2f}x", ">= 3x", first / second >= 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-flagship", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    try:
        if not args.skip_flagship:
            flagship(tmp)
        second_run(tmp)
        parallel(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
