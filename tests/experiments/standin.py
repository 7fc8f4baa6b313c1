"""A stand-in run function for sweep tests: deterministic metrics, a little work, real files."""

import json
import os
import time

from priorguard.store import ResultStore, write_json


def run(task):
    if task.options.get("fail_seed") == task.seed:
        raise RuntimeError(f"planned failure for seed {task.seed}")
    time.sleep(task.options.get("sleep", 0.0))
    metrics = {"seed": task.seed, "value": (task.seed * 7919) % 101 / 100.0,
               "overrides": task.overrides, "pid": os.getpid()}
    store = ResultStore(task.store_root)
    with store.writing(task.run_id) as folder:
        (folder / "spec.toml").write_text(task.spec_toml)
        (folder / "series.json").write_text(json.dumps(list(range(2000))))
        write_json(folder / "metrics.json", metrics)
    return metrics


def hash_flags(task):
    """Reports whether this worker's string hashing is fixed (no files: nothing to write)."""
    import sys

    metrics = {"seed": task.seed, "hash_randomization": sys.flags.hash_randomization,
               "hash_seed": os.environ.get("PYTHONHASHSEED")}
    store = ResultStore(task.store_root)
    with store.writing(task.run_id) as folder:
        write_json(folder / "metrics.json", metrics)
    return metrics


def blas_threads(task):
    """Reports this worker's CPUs and the thread counts of the BLAS libraries it loaded."""
    import numpy  # noqa: F401  (loads OpenBLAS, as a real run does)
    import threadpoolctl

    metrics = {"seed": task.seed, "cpus": len(os.sched_getaffinity(0)),
               "blas_threads": [p["num_threads"] for p in threadpoolctl.threadpool_info()
                                if p["user_api"] == "blas"]}
    store = ResultStore(task.store_root)
    with store.writing(task.run_id) as folder:
        write_json(folder / "metrics.json", metrics)
    return metrics
