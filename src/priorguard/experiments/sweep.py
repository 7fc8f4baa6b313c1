"""Sweeps: the grid of a spec's ``sweep`` table x seeds, run locally or on Ray, resumable.

Every run is a :class:`RunTask` of plain data (the resolved spec as TOML text, a
seed, the store folder). A worker runs it and writes its folder atomically;
only the parent writes the SQLite index. Resume is automatic: runs whose folder
is complete are skipped, everything else is (re)done. One failed run never
stops the others, and each failure is reported as it happens.

Backends: ``local`` (a process pool of spawned workers; one worker runs in
this process) and ``ray`` (Ray tasks on a cluster given by its address, or on
a local Ray started on loopback for the sweep). Both run the same tasks with
the same worker set-up (:func:`priorguard._runtime.configure`). A Ray worker
that cannot see the store's folder (no shared file system) sends the run's
files back and the parent writes them, with the same atomic rename.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from priorguard.store import ResultStore, run_id_for

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
    #: wall-clock (``time.time()``) start and end of the run in its worker (queue time excluded)
    started: float | None = None
    finished: float | None = None


def tasks_for(spec: Any, store_root: str | Path, *, options: dict[str, Any] | None = None) -> list[RunTask]:
    """The tasks of a spec's sweep grid x seeds (a spec without a sweep gives one per seed)."""
    version = spec.source().fingerprint()
    out = []
    for overrides, resolved, seed in spec.expand():
        data = resolved.to_dict()
        out.append(RunTask(
            run_id=run_id_for(data, seed, version),
            experiment=spec.name,
            env=spec.env_label,
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


def _worker_init(counter: Any = None, workers: int = 1) -> None:
    """Sets a pool worker up: its own share of the CPUs, then JAX (:func:`configure`).

    With several workers each is pinned to a disjoint group of the CPUs this
    process may use, before JAX starts: XLA sizes its thread pools by the
    CPUs a process may run on, so two workers on two cores get one thread
    each instead of fighting over both.
    """
    if counter is not None and workers > 1 and hasattr(os, "sched_setaffinity"):
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= workers:
            os.sched_setaffinity(0, cpus[index % workers::workers])
    from priorguard import _runtime

    _runtime.configure(worker=True)


def run_one(task: RunTask, run_fn: str = DEFAULT_RUN_FN) -> TaskOutcome:
    """Runs one task in this process, catching its failure into the outcome.

    Afterwards hands the heap's free pages back (:func:`priorguard._runtime.return_free_memory`)
    and drops JAX's compiled programs if the process nears its memory-map limit or, in a sweep
    worker, holds more than :data:`~priorguard._runtime.RETAIN_BYTES`
    (:func:`~priorguard._runtime.release_compiled_programs`): a worker starts each run lean.
    """
    from priorguard import _runtime

    started = time.time()
    try:
        metrics = _resolve(run_fn)(task)
        return TaskOutcome(task.run_id, True, metrics=metrics, started=started, finished=time.time())
    except Exception as exc:  # one failed run never stops the others
        tb = traceback.format_exception(exc)
        return TaskOutcome(task.run_id, False, error=f"{type(exc).__name__}: {exc}\n{''.join(tb[-3:])}",
                           started=started, finished=time.time())
    finally:  # a worker that runs many runs never reaches the memory-map limit, nor grows run by run
        _runtime.return_free_memory()
        if _runtime.release_compiled_programs(retain_bytes=_runtime.RETAIN_BYTES if _runtime.WORKER else None):
            _runtime.return_free_memory()


Event = Literal["skip", "damaged", "start", "done", "failed"]


def run_sweep(
    tasks: Iterable[RunTask],
    store: ResultStore,
    *,
    workers: int = 1,
    backend: Literal["local", "ray"] = "local",
    address: str | None = None,
    run_fn: str = DEFAULT_RUN_FN,
    on_event: Callable[[Event, RunTask, Any], None] | None = None,
) -> dict[str, TaskOutcome]:
    """Runs the tasks not already done; returns the outcome of each task run now.

    Args:
        tasks: the sweep's tasks.
        store: where results go; reconciled first, so an interrupted sweep resumes.
        workers: parallel worker processes (local) or concurrent tasks (Ray).
        backend: ``"local"`` (process pool; 1 worker runs in this process) or ``"ray"``.
        address: Ray cluster address, e.g. ``"auto"`` or ``"HOST:6379"`` (default: start a
            local Ray on loopback with ``workers`` CPUs, shut down when the sweep ends). Not used
            when Ray is already initialized in this process.
        run_fn: ``"module:function"`` that runs one task and returns its metrics.
        on_event: called as runs are skipped, start, finish or fail (with their TaskOutcome), and
            before a damaged run is made again (with the files that changed since it was written).

    Returns:
        run id -> outcome, for the tasks run now.

    Raises:
        BackendError: the Ray backend without Ray installed, or a cluster that cannot be reached.
        StoreBusyError: another sweep is writing to the store.
    """
    with store.exclusive():
        return _run_sweep(tasks, store, workers, backend, address, run_fn, on_event or (lambda *a: None))


def _run_sweep(tasks, store, workers, backend, address, run_fn, emit) -> dict[str, TaskOutcome]:
    damaged = store.reconcile()
    todo = []
    for task in tasks:
        if task.run_id in damaged:
            emit("damaged", task, damaged[task.run_id])
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
            store.mark_done(task.run_id, outcome.metrics or {}, started=outcome.started, finished=outcome.finished)
            emit("done", task, outcome)
        else:
            store.mark_failed(task.run_id, outcome.error or "unknown error", started=outcome.started,
                              finished=outcome.finished)
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
    from priorguard._runtime import fix_hash_seed_for_children

    fix_hash_seed_for_children()  # workers lower identical programs: the persistent cache hits across them
    with _blas_threads_for_children(workers):
        _pool_loop(list(tasks), workers, run_fn, emit, finish, store)


@contextmanager
def _blas_threads_for_children(workers: int) -> Iterator[None]:
    """Sizes the thread pools of pool workers: one BLAS thread, OpenMP pools to their share of the CPUs.

    The libraries read these variables when they load, which in a spawned
    worker is while it imports its task's code, before the pool initializer
    pins it; so they are set here, in the environment the workers start
    with (and restored afterwards). One BLAS thread whatever the worker count,
    as :func:`priorguard._runtime.limit_blas_threads` sets in any process that
    runs experiments: a BLAS's thread count changes its rounding, and a run's
    numbers must not depend on how many workers ran it. Variables the user set
    are left alone.
    """
    from priorguard._runtime import BLAS_THREAD_VARS, cpu_count

    share = max(1, cpu_count() // max(workers, 1))
    values = {"OMP_NUM_THREADS": str(share), **dict.fromkeys(BLAS_THREAD_VARS, "1")}
    saved = {var: os.environ.get(var) for var in values}
    for var, value in values.items():
        os.environ.setdefault(var, value)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)


def _pool_loop(pending, workers, run_fn, emit, finish, store) -> None:
    while pending:
        ctx = get_context("spawn")  # never fork a process that has started JAX
        counter = ctx.Value("i", 0)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(counter, workers)) as pool:
            futures: dict[Future, RunTask] = {}
            for task in pending:
                store.mark_running(task.run_id)
                emit("start", task, None)
                futures[pool.submit(run_one, task, run_fn)] = task
            pending = []
            live = set(futures)
            broken = False
            try:
                while live:
                    done, live = wait(live, return_when=FIRST_COMPLETED)
                    for fut in done:
                        task = futures[fut]
                        try:
                            finish(task, fut.result())
                        except BrokenProcessPool:
                            broken = True
                            finish(task, TaskOutcome(task.run_id, False, error="worker process died"))
            except KeyboardInterrupt:
                # Ctrl-C: queued runs are dropped and running ones stopped now, not finished first
                processes = list((getattr(pool, "_processes", None) or {}).values())
                for process in processes:
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            if broken:
                # runs lost with the pool were marked failed; the rest already finished
                pending = []


# --- Ray ---------------------------------------------------------------------------


class BackendError(RuntimeError):
    """A sweep backend cannot be used (Ray not installed, cluster unreachable)."""


def import_ray() -> Any:
    """Imports Ray (an optional dependency), or raises :class:`BackendError` saying how to get it."""
    try:
        import ray
    except ImportError as exc:
        raise BackendError(
            f"the ray backend needs Ray, which is not installed ({exc}); "
            "install it with: pip install 'priorguard[ray]'"
        ) from None
    return ray


def check_ray_address(address: str | None, *, timeout: float = 3.0) -> None:
    """Fails fast when nothing listens at a ``host:port`` (or ``ray://host:port``) Ray address.

    Ray itself retries an unreachable cluster address for minutes before it
    gives up; a plain TCP connection answers in at most ``timeout`` seconds.
    ``"auto"``, ``"local"`` and addresses without a port are left to Ray.

    Raises:
        BackendError: naming the address and what the connection said.
    """
    if not address or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    import socket

    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise BackendError(
            f"cannot connect to the Ray cluster at {address}: nothing answers at {host}:{port} ({reason}); "
            "start one there with `ray start --head --port PORT`, or leave out --address to run a local Ray"
        ) from None


@contextmanager
def _local_ray_environment(ray: Any) -> Iterator[None]:
    """Settings for a Ray started here: loopback only, no usage stats.

    Ray binds a new local cluster to the address it would use to reach other
    machines; Ray's own switch for single-machine clusters (the one it uses on
    macOS and Windows) binds every process to 127.0.0.1 instead. It is read
    from the environment at import and by the processes Ray starts, so both
    are set while the cluster starts.
    """
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    cluster_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if cluster_flag is not None and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if cluster_flag is not None:
            constants.ENABLE_RAY_CLUSTER = cluster_flag
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_ray(ray: Any, address: str | None, workers: int) -> None:
    """Connects to the cluster at ``address``, or starts a local Ray with ``workers`` CPUs."""
    from priorguard._runtime import HASH_SEED, fix_hash_seed_for_children

    fix_hash_seed_for_children()  # a local Ray's workers inherit it
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              "runtime_env": {"env_vars": {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", HASH_SEED)}}}
    check_ray_address(address)
    try:
        if address:
            ray.init(address=address, **common)
        else:
            with _local_ray_environment(ray):
                # "local" always starts a new cluster (never joins one found through RAY_ADDRESS)
                ray.init(address="local", num_cpus=max(workers, 1), **common)
    except Exception as exc:
        what = f"connect to the Ray cluster at {address}" if address else "start a local Ray"
        raise BackendError(f"cannot {what}: {type(exc).__name__}: {exc}") from None


def _run_ray(tasks, store, workers, address, run_fn, emit, finish) -> None:
    """Runs the tasks as Ray tasks, at most ``workers`` at a time, finishing each as it completes.

    A run is written by its worker straight into the store when the worker
    sees the store's folder (one machine, or a shared file system); otherwise
    the worker runs into a temporary store of its own and sends the run's
    files back, and they are written here. Either way the folder appears by
    an atomic rename, and only this process writes the index.
    """
    if not tasks:
        return  # everything was already done: no cluster needed
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, address, workers)
    # a folder whose presence tells a worker that it sees this very store
    marker = f".ray-{uuid.uuid4().hex[:12]}"
    inflight: dict[Any, RunTask] = {}
    try:
        (store.tmp_dir / marker).mkdir(parents=True)
        # no retries: a run whose worker died is failed, and the next sweep redoes it (as locally)
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        queue = [replace(t, store_root=str(Path(t.store_root).resolve())) for t in tasks]
        while queue or inflight:
            while queue and len(inflight) < max(workers, 1):
                task = queue.pop(0)
                store.mark_running(task.run_id)
                emit("start", task, None)
                inflight[remote.remote(asdict(task), run_fn, marker)] = task
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                task = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the worker died (or was killed): this run fails, the others go on
                    outcome = TaskOutcome(task.run_id, False, error=f"ray task failed: {_first_line(exc)}")
                else:
                    try:
                        outcome = _receive(store, task, result)
                    except Exception as exc:
                        outcome = TaskOutcome(task.run_id, False,
                                              error=f"writing the run's files failed: {_first_line(exc)}")
                finish(task, outcome)
    finally:
        for ref in inflight:  # interrupted: stop the runs still going
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        shutil.rmtree(store.tmp_dir / marker, ignore_errors=True)
        if started_here:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _ray_task(task: dict[str, Any], run_fn: str, marker: str) -> dict[str, Any]:
    """The Ray task: configures JAX like a local worker, then runs one task."""
    _worker_init()
    return _run_remote(RunTask(**task), run_fn, marker)


def _run_remote(task: RunTask, run_fn: str, marker: str) -> dict[str, Any]:
    """Runs a task on a Ray worker; the run's files come back when the store is not visible here."""
    if (Path(task.store_root) / "tmp" / marker).is_dir():
        return {"outcome": asdict(run_one(task, run_fn)), "files": None}
    local = Path(tempfile.mkdtemp(prefix="priorguard-run-"))
    try:
        outcome = run_one(replace(task, store_root=str(local)), run_fn)
        folder = local / "runs" / task.run_id
        files = None
        if outcome.ok and folder.is_dir():
            files = {p.relative_to(folder).as_posix(): p.read_bytes()
                     for p in sorted(folder.rglob("*")) if p.is_file()}
        return {"outcome": asdict(outcome), "files": files}
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _receive(store: ResultStore, task: RunTask, result: dict[str, Any]) -> TaskOutcome:
    """A Ray task's outcome; writes the run's files into the store when the worker sent them."""
    outcome = TaskOutcome(**result["outcome"])
    files = result.get("files")
    if outcome.ok and files is not None:
        with store.writing(task.run_id) as folder:
            # metrics.json last, as a run writes it
            for rel, data in sorted(files.items(), key=lambda kv: (kv[0] == "metrics.json", kv[0])):
                parts = PurePosixPath(rel).parts
                if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
                    raise ValueError(f"unsafe file name from a worker: {rel!r}")
                path = folder.joinpath(*parts)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return outcome


def run_here(loaded: Any, task: RunTask, store: Any, on_event: Any, progress: Any) -> None:
    """One run in this process (its steps reported through ``progress``), recorded in the store."""
    from priorguard.experiments import runner

    damaged = store.reconcile()
    if task.run_id in damaged:
        on_event("damaged", task, damaged[task.run_id])
    store.register(task.run_id, experiment=task.experiment, env=task.env, seed=task.seed, overrides=task.overrides)
    if store.is_done(task.run_id):
        on_event("skip", task, None)
        return
    store.mark_running(task.run_id)
    try:
        spec_one = type(loaded).from_toml(task.spec_toml)  # the task's resolved spec: its sweep point applied
        artifacts = runner.run_experiment(spec_one, task.seed, progress=progress)
        with store.writing(task.run_id) as folder:
            runner.write_run(folder, spec_one, task.seed, task.overrides, artifacts)
        store.mark_done(task.run_id, artifacts.metrics)
        on_event("done", task, None)
    except Exception as exc:  # reported, recorded, non-zero exit
        store.mark_failed(task.run_id, f"{type(exc).__name__}: {exc}")
        on_event("failed", task, TaskOutcome(task.run_id, False, error=f"{type(exc).__name__}: {exc}"))
