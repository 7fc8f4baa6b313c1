"""Experiment-pipeline benchmarks: ratios measured in this run.

1. Flagship wall time: ``priorguard sweep coin-shift --workers 2`` then
   ``priorguard report``, exactly what ``make demo`` runs, in fresh processes
   with an empty persistent compilation cache (compilation included).
   Target: <= 180 s on 2 cores.
2. Sweep parallelism: the flagship sweep again with ``--workers 1`` and
   ``--workers 2``, on the cache the first measurement filled (so both measure
   run time, not first-time compilation). Target: speed-up >= 1.7x. Also
   printed, from the sweeps' own run records: each worker's first run (it pays
   the process's set-up) against later runs, how much slower a run is while
   both workers are busy, and the ceiling that leaves for long sweeps. A lone
   worker runs XLA on every core, so the ratio also depends on how well one run
   uses them; the sweep's own scaling is printed too: 2 workers against 1 worker
   held to one core (``taskset``), each run then on one core.
3. Compiled-code reuse: two runs of the same shapes (seeds 0 and 1) in one
   process, first against an empty persistent cache. Target: the second run
   >= 3x faster than the first.

Run: ``.venv/bin/python benchmarks/bench_experiments.py [--skip-flagship]``
(about 16 minutes on 2 cores). Timings are single measurements: run on a
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PG = [sys.executable, "-m", "priorguard.cli"]


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


def _run_times(store: Path) -> tuple[list[Any], list[float]]:
    """A sweep's finished runs in order of start, and each one's seconds in its worker.

    With ``w`` workers the ``w`` earliest starts are the workers' first runs
    (they pay the per-process set-up: imports, tracing, cache loads); later
    runs reuse the programs.
    """
    from priorguard.store import ResultStore

    records = sorted(ResultStore(store).records(status="done"), key=lambda r: r.started)
    return records, [r.seconds for r in records]


def _memory_contention() -> float:
    """Slow-down of a memory-bound numpy loop when both of two cores run one at once."""
    code = ("import time, numpy as np\na = np.random.rand(4_000_000)\nt = time.perf_counter()\n"
            "for _ in range(200): a = a * 1.0000001 + 1e-9\nprint(time.perf_counter() - t)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cpus = sorted(os.sched_getaffinity(0))[:2]

    def at_once(which: list[int]) -> list[float]:
        procs = [subprocess.Popen(["taskset", "-c", str(c), sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  text=True, env=env) for c in which]
        return [float(p.communicate()[0]) for p in procs]

    alone = at_once(cpus[:1])[0]
    return max(at_once(cpus)) / alone


def parallel(tmp: Path, *, warm: bool) -> None:
    env = {**os.environ, "PRIORGUARD_CACHE": str(tmp / "cache-flagship")}
    # Programs are cached per CPU count (pinned 2-worker workers: 1 CPU; a lone worker: all),
    # so both kinds are filled first; the flagship row has filled the 1-CPU one.
    if not warm:
        _timed(PG + ["sweep", "coin-shift", "--workers", "2", "--out", str(tmp / "warm2")], env)
    _timed(PG + ["sweep", "coin-shift", "--workers", "1", "--out", str(tmp / "warm1")], env)
    cpu: list[float] = []
    one = _timed(PG + ["sweep", "coin-shift", "--workers", "1", "--out", str(tmp / "w1")], env, cpu)
    two = _timed(PG + ["sweep", "coin-shift", "--workers", "2", "--out", str(tmp / "w2")], env, cpu)
    cores = len(os.sched_getaffinity(0))
    runs1, t1 = _run_times(tmp / "w1")
    runs2, t2 = _run_times(tmp / "w2")
    first1, later1 = t1[0], sum(t1[1:]) / len(t1[1:])
    first2, later2 = sum(t2[:2]) / 2, sum(t2[2:]) / len(t2[2:])
    print(f"[2] the flagship sweep ({len(runs1)} runs) with 1 and 2 workers, warm persistent cache")
    _row("1 worker (s)", f"{one:.1f}", "", None)
    _row("2 workers (s)", f"{two:.1f}", "", None)
    _row("  1 worker: first run / later runs (s)", f"{first1:.1f}/{later1:.1f}", "", None)
    _row("  2 workers: first runs / later runs (s)", f"{first2:.1f}/{later2:.1f}", "", None)
    # one worker runs XLA on every core; 2 workers, one core each, can only fill what it leaves idle
    _row("  cores busy, 1 worker / 2 workers (CPU s / wall s)", f"{cpu[0] / one:.2f}/{cpu[1] / two:.2f}", "", None)
    _row("  a run's slow-down with both workers busy (later runs)", f"{later2 / later1:.2f}x", "", None)
    if cores >= 2 and shutil.which("taskset"):
        _row("  memory-bound numpy loop: slow-down with both cores busy", f"{_memory_contention():.2f}x", "", None)
    _row(f"  ceiling for many runs: {min(cores, 2)} x later-run time, 1 / 2 workers",
         f"{min(cores, 2) * later1 / later2:.2f}x", "", None)
    _row("speed-up, 2 workers vs 1", f"{one / two:.2f}x", ">= 1.7x", one / two >= 1.7)
    if cores >= 2 and shutil.which("taskset"):
        # The sweep's own scaling, without a lone run's multi-threading: 1 worker held to one
        # core (it loads the same 1-CPU programs as a pinned worker) vs 2 workers on 2 cores.
        solo = _timed(["taskset", "-c", str(min(os.sched_getaffinity(0)))] + PG
                      + ["sweep", "coin-shift", "--workers", "1", "--out", str(tmp / "w1-core")], env)
        _row("  1 worker on one core (s)", f"{solo:.1f}", "", None)
        _row("  one core per run: 2 workers vs 1 worker on 1 core", f"{solo / two:.2f}x", "", None)


_SECOND_RUN = """
import json, sys, time
from priorguard import _runtime
_runtime.configure()
from priorguard.experiments.runner import run_experiment
from priorguard.experiments import load_spec
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
        parallel(tmp, warm=not args.skip_flagship)
        second_run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
