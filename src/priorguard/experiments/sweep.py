"""Sweeps: the grid of a spec's ``sweep`` table x seeds, run locally or on Ray, resumable.

Every run is a :class:`RunTask` of plain data (the resolved spec as TOML text, a
seed, the store folder). A worker runs it and writes its folder atomically;
only the parent writes the SQLite index. Resume is automatic: runs whose folder
is complete are skipped, everything else is (re)done. One failed run never
stops the others, and each failure is reported as it happens.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from priorguard.experiments.store import ResultStore, run_id_for

DEFAULT_RUN_FN = "priorguard.experiments.runner:execute_task"


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep, as plain data that crosses process boundaries."""

    run_id: str
    experiment: str
    env: str
    seed: int
    overrides: dict[str, Any]
    spec_toml: str
    store_root: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskOutcome:
    run_id: str
    ok: bool
    metrics: dict[str, Any] | None = None
    error: str | None = None


def tasks_for(spec: Any, store_root: str | Path, *, options: dict[str, Any] | None = None) -> list[RunTask]:
    """The tasks of a spec's sweep grid x seeds (a spec without a sweep gives one per seed)."""
    from priorguard.envs import env_info

    version = env_info(spec.env).version
    out = []
    for overrides, resolved, seed in spec.expand():
        data = resolved.to_dict()
        out.append(RunTask(
            run_id=run_id_for(data, seed, version),
            experiment=spec.name,
            env=spec.env,
            seed=seed,
            overrides=overrides,
            spec_toml=resolved.to_toml(),
            store_root=str(store_root),
            options=dict(options or {}),
        ))
    return out


def _resolve(run_fn: str) -> Callable[[RunTask], dict[str, Any]]:
    module, _, name = run_fn.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_init() -> None:
    from priorguard._runtime import configure

    configure()


def run_one(task: RunTask, run_fn: str = DEFAULT_RUN_FN) -> TaskOutcome:
    """Runs one task in this process, catching its failure into the outcome."""
    try:
        metrics = _resolve(run_fn)(task)
        return TaskOutcome(task.run_id, True, metrics=metrics)
    except Exception as exc:  # one failed run never stops the others
        tb = traceback.format_exception(exc)
        return TaskOutcome(task.run_id, False, error=f"{type(exc).__name__}: {exc}\n{''.join(tb[-3:])}")


Event = Literal["skip", "start", "done", "failed"]


def run_sweep(
    tasks: Iterable[RunTask],
    store: ResultStore,
    *,
    workers: int = 1,
    backend: Literal["local", "ray"] = "local",
    address: str | None = None,
    run_fn: str = DEFAULT_RUN_FN,
    on_event: Callable[[Event, RunTask, TaskOutcome | None], None] | None = None,
) -> dict[str, TaskOutcome]:
    """Runs the tasks not already done; returns the outcome of each task run now.

    Args:
        tasks: the sweep's tasks.
        store: where results go; reconciled first, so an interrupted sweep resumes.
        workers: parallel worker processes (local) or concurrent tasks (Ray).
        backend: ``"local"`` (process pool; 1 worker runs in this process) or ``"ray"``.
        address: Ray cluster address (default: a local Ray on loopback).
        run_fn: ``"module:function"`` that runs one task and returns its metrics.
        on_event: called as runs are skipped, start, finish or fail.

    Returns:
        run id -> outcome, for the tasks run now.
    """
    emit = on_event or (lambda *a: None)
    store.reconcile()
    todo = []
    for task in tasks:
        store.register(task.run_id, experiment=task.experiment, env=task.env, seed=task.seed,
                       overrides=task.overrides)
        if store.is_done(task.run_id):
            emit("skip", task, None)
        else:
            todo.append(task)
    # a task listed twice (identical runs) runs once
    unique = list({t.run_id: t for t in todo}.values())
    outcomes: dict[str, TaskOutcome] = {}

    def finish(task: RunTask, outcome: TaskOutcome) -> None:
        outcomes[task.run_id] = outcome
        if outcome.ok:
            store.mark_done(task.run_id, outcome.metrics or {})
            emit("done", task, outcome)
        else:
            store.mark_failed(task.run_id, outcome.error or "unknown error")
            emit("failed", task, outcome)

    if backend == "ray":
        _run_ray(unique, store, workers, address, run_fn, emit, finish)
    elif workers <= 1:
        for task in unique:
            store.mark_running(task.run_id)
            emit("start", task, None)
            finish(task, run_one(task, run_fn))
    else:
        _run_pool(unique, store, workers, run_fn, emit, finish)
    return outcomes


def _run_pool(tasks, store, workers, run_fn, emit, finish) -> None:
    pending = list(tasks)
    while pending:
        ctx = get_context("spawn")  # never fork a process that has started JAX
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures: dict[Future, RunTask] = {}
            for task in pending:
                store.mark_running(task.run_id)
                emit("start", task, None)
                futures[pool.submit(run_one, task, run_fn)] = task
            pending = []
            live = set(futures)
            broken = False
            while live:
                done, live = wait(live, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = futures[fut]
                    try:
                        finish(task, fut.result())
                    except BrokenProcessPool:
                        broken = True
                        finish(task, TaskOutcome(task.run_id, False, error="worker process died"))
            if broken:
                # runs lost with the pool were marked failed; the rest already finished
                pending = []


def _run_ray(tasks, store, workers, address, run_fn, emit, finish) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "the ray backend needs the optional extra: pip install 'priorguard[ray]'"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"_node_ip_address": "127.0.0.1"}))
    try:
        remote = ray.remote(_ray_task)
        queue = list(tasks)
        inflight: dict[Any, RunTask] = {}
        while queue or inflight:
            while queue and len(inflight) < max(workers, 1):
                task = queue.pop(0)
                store.mark_running(task.run_id)
                emit("start", task, None)
                inflight[remote.remote(asdict(task), run_fn)] = task
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                task = inflight.pop(ref)
                try:
                    finish(task, TaskOutcome(**ray.get(ref)))
                except Exception as exc:
                    finish(task, TaskOutcome(task.run_id, False, error=f"ray task failed: {exc}"))
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(task: dict[str, Any], run_fn: str) -> dict[str, Any]:
    _worker_init()
    return asdict(run_one(RunTask(**task), run_fn))
