"""The Ray sweep backend on a local Ray: same metrics as the local backend, resume, failures, clean-up.

Ray is a dev dependency: a missing Ray is an error here, never a skip. Each
sweep runs in a subprocess (as ``priorguard sweep``), so no Ray state stays in
the test process; ``RAY_TMPDIR`` gives each local Ray its own short temporary
folder (Ray's socket paths are limited to ~107 characters), which also tells
which processes were Ray's, to check that none is left behind.
"""

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import ray  # noqa: F401  (a dev dependency: its absence must fail, not skip)

from priorguard.store import ResultStore, run_id_for
from priorguard.experiments.sweep import RunTask, _receive, _run_remote
from tiny_sizes import tiny_args

HERE = Path(__file__).resolve().parent

TIMING = "_s"


@pytest.fixture
def ray_env():
    """Environment for a subprocess that starts a local Ray: own temp folder, no usage stats."""
    tmp = tempfile.mkdtemp(prefix="pgray-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAY_ADDRESS", None)
    yield env
    left = _wait_for_ray_processes_to_end(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"


def _ray_processes(tmp: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if tmp in cmd:
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def _wait_for_ray_processes_to_end(tmp: str, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _ray_processes(tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def sweep_cli(out: Path, env: dict, *extra: str) -> subprocess.Popen:
    # lava-shift sweeps planner.veto.enabled over [true, false]: 2 points x 1 seed
    args = [sys.executable, "-m", "priorguard.cli", "sweep", "lava-shift", "--out", str(out), *extra,
            *tiny_args("lava-shift", "seeds=[0]")]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def metrics_by_run(store: Path) -> dict[str, dict]:
    out = {}
    for folder in (store / "runs").iterdir():
        m = json.loads((folder / "metrics.json").read_text())
        out[folder.name] = {k: v for k, v in m.items() if not k.endswith(TIMING)}
    return out


def index_rows(store: Path) -> list[tuple]:
    with sqlite3.connect(store / "index.sqlite") as db:
        return db.execute("SELECT run_id, status, metrics, finished FROM runs ORDER BY run_id").fetchall()


def _lines(text: str, start: str) -> int:
    return sum(line.startswith(start) for line in text.splitlines())


def _same(indexed, written) -> bool:
    if isinstance(indexed, float) and math.isnan(indexed):
        return written is None
    return indexed == written


def test_ray_sweep_gives_the_local_metrics_and_resumes(tmp_path, ray_env):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    # both sweeps at once (the local Ray spends its first seconds starting up); one Ray worker runs
    # both points, as the local backend's single worker does (the other tests run 2 Ray workers)
    p_ray = sweep_cli(on_ray, ray_env, "--backend", "ray", "--workers", "1")
    p_local = sweep_cli(local, ray_env, "--backend", "local", "--workers", "1")
    rc, out, err = finished(p_ray)
    assert rc == 0, err[-4000:]
    assert _lines(err, "done ") == 2 and _lines(err, "failed ") == 0
    assert "regret" in out  # the results table
    rc, _, err_local = finished(p_local)
    assert rc == 0, err_local[-4000:]

    m_ray, m_local = metrics_by_run(on_ray), metrics_by_run(local)
    assert len(m_ray) == 2
    assert m_ray == m_local  # same run ids (spec hashes) and the same metrics, timings aside

    rows = index_rows(on_ray)
    assert [r[0] for r in rows] == sorted(m_ray)  # every run exactly once
    assert all(r[1] == "done" for r in rows)
    for run_id, _, metrics, _ in rows:  # the index holds the run's metrics (NaN there, null in the JSON file)
        indexed = {k: v for k, v in json.loads(metrics).items() if not k.endswith(TIMING)}
        assert indexed and all(_same(v, m_ray[run_id][k]) for k, v in indexed.items())
    assert list((on_ray / "tmp").iterdir()) == []  # no temporary folder (or marker) left

    # a second Ray sweep of the same spec skips everything and changes nothing
    rc, _, err = finished(sweep_cli(on_ray, ray_env, "--backend", "ray", "--workers", "1"))
    assert rc == 0, err[-4000:]
    assert _lines(err, "skip ") == 2 and _lines(err, "done ") == 0
    assert index_rows(on_ray) == rows
    assert metrics_by_run(on_ray) == m_ray


FAILING_SWEEP = textwrap.dedent("""
    import json, sys
    import ray
    from test_sweep_store import make_tasks
    from priorguard.store import ResultStore
    from priorguard.experiments.sweep import run_sweep

    root = sys.argv[1]
    store = ResultStore(root)
    tasks = make_tasks(root, 4, fail_seed=0, crash_seed=3, sleep=2.0)
    events = []
    run_sweep(tasks, store, workers=2, backend="ray", run_fn="test_ray_backend:crash_or_standin",
              on_event=lambda e, t, o: events.append([e, t.seed, (o.error or "") if o else ""]))
    print(json.dumps({"events": events, "ray_still_up": ray.is_initialized()}))
""")


def crash_or_standin(task):
    """The stand-in run, except that the task with ``crash_seed`` kills its worker process."""
    if task.options.get("crash_seed") == task.seed:
        os._exit(3)
    from standin import run

    return run(task)


def test_ray_failure_is_reported_as_it_happens_and_the_others_finish(tmp_path, ray_env):
    store_dir = tmp_path / "store"
    r = subprocess.run([sys.executable, "-c", FAILING_SWEEP, str(store_dir)], env=ray_env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ray_still_up"] is False  # the Ray started for the sweep was shut down
    events = [(e, s) for e, s, _ in result["events"]]
    errors = {s: msg for e, s, msg in result["events"] if e == "failed"}
    assert sorted(errors) == [0, 3]
    assert "planned failure for seed 0" in errors[0]  # an exception in the run
    assert errors[3].startswith("ray task failed")  # the worker process died
    assert sorted(s for e, s in events if e == "done") == [1, 2]
    # seed 0 fails at once, seed 1 sleeps 2 s beside it: the failure comes first
    assert events.index(("failed", 0)) < events.index(("done", 1))
    store = ResultStore(store_dir)
    recs = {r.seed: r for r in store.records()}
    assert recs[0].status == "failed" and "planned failure" in recs[0].error
    assert recs[3].status == "failed" and "ray task failed" in recs[3].error
    assert all(recs[s].status == "done" for s in (1, 2))
    assert sorted(p.name for p in store.runs_dir.iterdir()) == sorted(recs[s].run_id for s in (1, 2))
    assert list(store.tmp_dir.iterdir()) == []


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def _task(root: Path, seed: int, **options) -> RunTask:
    return RunTask(run_id=run_id_for({"name": "standin", "i": seed}, seed=seed, env_version=0),
                   experiment="standin", env="none", seed=seed, overrides={},
                   spec_toml=f'name = "standin"\ni = {seed}\n', store_root=str(root), options=options)


def test_worker_that_cannot_see_the_store_sends_the_files_back(tmp_path, standin):
    store = ResultStore(tmp_path / "store")
    task = _task(store.root, 1)
    # no marker visible: the worker runs into a store of its own and ships the folder
    result = _run_remote(task, "standin:run", ".ray-not-here")
    assert result["outcome"]["ok"] and sorted(result["files"]) == ["checksums.json", "metrics.json", "series.json",
                                                                   "spec.toml"]
    assert not store.is_done(task.run_id)
    outcome = _receive(store, task, result)
    assert outcome.ok and store.is_done(task.run_id)
    assert store.damaged_files(task.run_id) == []  # the checksums are the received files'
    assert (store.run_dir(task.run_id) / "spec.toml").read_text() == task.spec_toml
    assert list(store.tmp_dir.iterdir()) == []
    # a failed run ships nothing
    bad = _run_remote(_task(store.root, 2, fail_seed=2), "standin:run", ".ray-not-here")
    assert not bad["outcome"]["ok"] and bad["files"] is None


def test_worker_that_sees_the_store_writes_it_directly(tmp_path, standin):
    store = ResultStore(tmp_path / "store")
    (store.tmp_dir / ".ray-here").mkdir()
    task = _task(store.root, 3)
    result = _run_remote(task, "standin:run", ".ray-here")
    assert result["outcome"]["ok"] and result["files"] is None
    assert store.is_done(task.run_id)


def test_unsafe_file_names_from_a_worker_are_refused(tmp_path):
    store = ResultStore(tmp_path / "store")
    task = _task(store.root, 4)
    result = {"outcome": {"run_id": task.run_id, "ok": True, "metrics": {}, "error": None},
              "files": {"../escape.txt": b"x", "metrics.json": b"{}"}}
    with pytest.raises(ValueError, match="unsafe"):
        _receive(store, task, result)
    assert not store.is_done(task.run_id) and not (store.root / "escape.txt").exists()
    assert list(store.tmp_dir.iterdir()) == []


NO_RAY = textwrap.dedent("""
    import sys
    sys.modules["ray"] = None  # as if Ray were not installed
    from priorguard.cli import main
    sys.argv = ["priorguard", "sweep", "lava-shift", "--backend", "ray", "--out", sys.argv[1]]
    main()
""")


def test_cli_without_ray_is_a_clear_error(tmp_path):
    out = tmp_path / "store"
    r = subprocess.run([sys.executable, "-c", NO_RAY, str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "priorguard[ray]" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_address_needs_the_ray_backend(tmp_path):
    out = tmp_path / "store"
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "sweep", "lava-shift", "--out", str(out),
                        "--address", "auto"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--backend ray" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_unreachable_address_fails_fast_and_writes_nothing(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "store"
    r = subprocess.run([sys.executable, "-m", "priorguard.cli", "sweep", "lava-shift", "--out", str(out),
                        "--backend", "ray", "--address", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    # our own check answered (Ray alone retries such an address for minutes, then says something else)
    assert f"127.0.0.1:{port}" in r.stderr and "nothing answers" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
