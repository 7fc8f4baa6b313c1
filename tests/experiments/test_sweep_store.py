"""Result store and sweep machinery with a stand-in run: atomicity, resume, failures, SIGKILL."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from priorguard.store import ResultStore, StoreBusyError, run_id_for
from priorguard.experiments.sweep import RunTask, run_sweep

HERE = Path(__file__).resolve().parent
RUN_FN = "standin:run"


@pytest.fixture(autouse=True)
def _standin_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def make_tasks(root, n, **options):
    return [
        RunTask(run_id=run_id_for({"name": "standin", "i": i}, seed=i, env_version=0), experiment="standin",
                env="none", seed=i, overrides={"i": i % 3}, spec_toml=f'name = "standin"\ni = {i}\n',
                store_root=str(root), options=options)
        for i in range(n)
    ]


def test_run_id_depends_on_spec_seed_and_env_version_only():
    a = run_id_for({"name": "x", "seeds": [1, 2], "k": 1}, 0, 1)
    assert a == run_id_for({"name": "x", "seeds": [5], "k": 1}, 0, 1)
    assert a != run_id_for({"name": "x", "k": 2}, 0, 1)
    assert a != run_id_for({"name": "x", "k": 1}, 1, 1)
    assert a != run_id_for({"name": "x", "k": 1}, 0, 2)


def test_failed_write_leaves_nothing(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError):
        with store.writing("r1") as folder:
            (folder / "metrics.json").write_text("{}")
            raise ValueError("boom")
    assert not store.run_dir("r1").exists()
    assert list(store.tmp_dir.iterdir()) == []


def test_a_second_sweep_on_a_held_store_is_refused_and_touches_nothing(tmp_path):
    store = ResultStore(tmp_path / "s")
    tasks = make_tasks(store.root, 2)
    with store.exclusive():
        # another sweep's half-written run: reconcile would have removed it
        (store.tmp_dir / "abc.12345678").mkdir()
        other = ResultStore(tmp_path / "s")
        with pytest.raises(StoreBusyError, match=rf"another sweep \(pid {os.getpid()}\)"):
            run_sweep(tasks, other, workers=1, run_fn=RUN_FN)
        assert (store.tmp_dir / "abc.12345678").is_dir()
        assert store.records() == [] and not any(store.runs_dir.iterdir())
    # released when the holder is done: the same sweep now runs (and cleans up)
    assert len(run_sweep(tasks, store, workers=1, run_fn=RUN_FN)) == 2
    assert not (store.tmp_dir / "abc.12345678").exists()
    with store.exclusive():
        pass  # and the sweep released it in turn


def test_cli_sweep_on_a_held_store_exits_nonzero_without_a_traceback(tmp_path):
    store = ResultStore(tmp_path / "s")
    with store.exclusive():
        r = subprocess.run([sys.executable, "-m", "priorguard.cli", "sweep", "coin-shift", "--out", str(store.root)],
                           capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "another sweep" in r.stderr and "--out" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert store.records() == []


def test_sweep_runs_each_once_reports_failures_and_resumes(tmp_path):
    store = ResultStore(tmp_path)
    tasks = make_tasks(tmp_path, 6, fail_seed=3)
    events = []
    outcomes = run_sweep(tasks, store, workers=1, run_fn=RUN_FN, on_event=lambda e, t, o: events.append((e, t.seed)))
    assert sum(o.ok for o in outcomes.values()) == 5
    assert ("failed", 3) in events and ("done", 5) in events
    # the failure was reported before later runs finished
    assert events.index(("failed", 3)) < events.index(("done", 5))
    recs = {r.seed: r for r in store.records()}
    assert recs[3].status == "failed" and "planned failure" in recs[3].error
    assert all(recs[s].status == "done" for s in (0, 1, 2, 4, 5))
    # resume: the finished runs are skipped, only the failed one is redone (and fails again)
    events.clear()
    again = run_sweep(tasks, store, workers=1, run_fn=RUN_FN, on_event=lambda e, t, o: events.append((e, t.seed)))
    assert list(again) == [tasks[3].run_id]
    assert sorted(s for e, s in events if e == "skip") == [0, 1, 2, 4, 5]


def test_a_run_whose_files_changed_since_written_is_named_and_made_again(tmp_path):
    store = ResultStore(tmp_path)
    tasks = make_tasks(tmp_path, 3)
    run_sweep(tasks, store, workers=1, run_fn=RUN_FN)
    sums = json.loads((store.run_dir(tasks[0].run_id) / "checksums.json").read_text())
    assert sorted(sums) == ["metrics.json", "series.json", "spec.toml"]
    assert all(store.damaged_files(t.run_id) == [] for t in tasks)
    series = store.run_dir(tasks[1].run_id) / "series.json"
    series.write_text(series.read_text().replace("1999", "1998"))  # same size, one byte off
    (store.run_dir(tasks[2].run_id) / "spec.toml").unlink()
    assert store.damaged_files(tasks[1].run_id) == ["series.json"]
    events = []
    again = run_sweep(tasks, store, workers=1, run_fn=RUN_FN, on_event=lambda e, t, o: events.append((e, t.seed, o)))
    assert ("damaged", 1, ["series.json"]) in events and ("damaged", 2, ["spec.toml"]) in events
    assert [e[:2] for e in events if e[0] == "skip"] == [("skip", 0)]
    assert sorted(again) == sorted([tasks[1].run_id, tasks[2].run_id]) and all(o.ok for o in again.values())
    assert all(store.damaged_files(t.run_id) == [] for t in tasks)
    assert {r.status for r in store.records()} == {"done"}


def test_two_workers_give_the_same_metrics_as_one(tmp_path):
    one = ResultStore(tmp_path / "one")
    two = ResultStore(tmp_path / "two")
    run_sweep(make_tasks(one.root, 4), one, workers=1, run_fn=RUN_FN)
    run_sweep(make_tasks(two.root, 4), two, workers=2, run_fn=RUN_FN)
    strip = lambda recs: {r.run_id: {k: v for k, v in r.metrics.items() if k != "pid"} for r in recs}  # noqa: E731
    assert strip(one.records()) == strip(two.records())


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from test_sweep_store import make_tasks
    from priorguard.store import ResultStore
    from priorguard.experiments.sweep import run_sweep
    store = ResultStore({root!r})
    run_sweep(make_tasks({root!r}, {n}, sleep=0.15), store, workers=2, run_fn="standin:run")
""")


def test_sigkill_at_random_moments_then_resume(tmp_path):
    n = 12
    script = SCRIPT.format(here=str(HERE), root=str(tmp_path), n=n)
    rng = random.Random(1234)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
        time.sleep(rng.uniform(1.0, 4.0))
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers die at once
        proc.wait()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    store = ResultStore(tmp_path)
    store.reconcile()
    records = store.records()
    ids = [r.run_id for r in records]
    assert len(ids) == len(set(ids)) == n
    assert all(r.status == "done" for r in records)
    folders = sorted(p.name for p in store.runs_dir.iterdir())
    assert folders == sorted(ids)
    for folder in store.runs_dir.iterdir():
        metrics = json.loads((folder / "metrics.json").read_text())
        assert len(json.loads((folder / "series.json").read_text())) == 2000
        assert (folder / "spec.toml").read_text().startswith('name = "standin"')
        assert metrics["seed"] == int((folder / "spec.toml").read_text().split("i = ")[1])
    assert list(store.tmp_dir.iterdir()) == []


HASH_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {here!r})
    from test_sweep_store import make_tasks
    from priorguard.store import ResultStore
    from priorguard.experiments.sweep import run_sweep
    store = ResultStore({root!r})
    run_sweep(make_tasks({root!r}, 2), store, workers=2, run_fn="standin:hash_flags")
    print(json.dumps([r.metrics for r in store.records()]))
""")


def test_sweep_workers_hash_strings_the_same_way(tmp_path):
    """Workers start with a fixed PYTHONHASHSEED even when the parent's hashing is random, so programs
    built by iterating over sets lower identically in every worker (and the compilation cache hits)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    here = str(Path(__file__).resolve().parent)
    r = subprocess.run([sys.executable, "-c", HASH_SCRIPT.format(here=here, root=str(tmp_path / "s"))], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(metrics) == 2
    assert all(m["hash_randomization"] == 0 and m["hash_seed"] == "0" for m in metrics)


def test_pool_workers_start_one_blas_thread(tmp_path, monkeypatch):
    """numpy's OpenBLAS sizes its pool when a worker imports its task's code, before the worker is
    pinned: every worker must start one BLAS thread (a BLAS's thread count changes its rounding,
    so a run's numbers would depend on the worker count), and OpenMP gets the worker's share."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    store = ResultStore(tmp_path / "s")
    run_sweep(make_tasks(store.root, 2), store, workers=2, run_fn="standin:blas_threads")
    metrics = [r.metrics for r in store.records()]
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert len(metrics) == 2
    for m in metrics:
        assert m["blas_threads"] and all(n == 1 for n in m["blas_threads"]), m
        if len(os.sched_getaffinity(0)) >= 2:
            assert m["cpus"] == share
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the parent's environment is restored


def test_cli_entry_reexecutes_with_a_fixed_hash_seed(monkeypatch):
    import priorguard.cli as cli

    calls = []

    def fake_execv(path, args):
        calls.append((path, list(args), os.environ.get("PYTHONHASHSEED")))
        raise SystemExit(0)

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    import priorguard._runtime as runtime

    # this test process hashes with whatever seed pytest got: decide by the variable alone
    monkeypatch.setattr(runtime, "hash_seed_is_fixed", lambda: "PYTHONHASHSEED" in os.environ)
    monkeypatch.setattr(os, "execv", fake_execv)
    monkeypatch.setattr(sys, "argv", ["priorguard", "list", "experiments"])
    with pytest.raises(SystemExit):
        cli.entry()
    assert calls == [(sys.executable, [sys.executable, "-m", "priorguard.cli", "list", "experiments"], "0")]
    # with the seed fixed, it runs in place
    monkeypatch.setattr(cli, "main", lambda: calls.append("main"))
    cli.entry()
    assert calls[-1] == "main"


def test_index_times_exclude_queueing_and_reconcile_matches_a_normal_finish(tmp_path):
    # 4 tasks of 0.5 s on 2 workers: all are queued at once, and the pool's workers take seconds to
    # start, but the index records each run's own time
    store = ResultStore(tmp_path / "s")
    run_sweep(make_tasks(store.root, 4, sleep=0.5), store, workers=2, run_fn=RUN_FN)
    records = store.records()
    assert all(0.5 <= r.seconds < 1.5 for r in records), [r.seconds for r in records]
    # forget the index's view of one run: reconcile reads its folder back to the same metrics
    first = records[0]
    with sqlite3.connect(store.root / "index.sqlite") as db:
        db.execute("UPDATE runs SET status='running', metrics=NULL WHERE run_id=?", (first.run_id,))
    store.reconcile()
    again = {r.run_id: r for r in store.records()}[first.run_id]
    # the index keeps what the run measured; the folder's copy also names the run (overrides, ...)
    assert again.status == "done"
    assert again.metrics == {k: v for k, v in first.metrics.items() if k != "overrides"}


def test_each_run_ends_by_checking_the_workers_memory_maps_failed_runs_too(tmp_path, monkeypatch):
    # a worker that runs many runs would otherwise reach the kernel's memory-map limit (a segfault in XLA),
    # and a sweep worker would hold the compiled programs of every run before (its memory grows run by run);
    # a run in the caller's own process (one worker) keeps its programs: the caller may want them
    import priorguard._runtime as runtime

    checks = []
    monkeypatch.setattr(runtime, "release_compiled_programs", lambda **kw: checks.append(kw["retain_bytes"]) or False)
    outcomes = run_sweep(make_tasks(tmp_path, 3, fail_seed=1), ResultStore(tmp_path), workers=1, run_fn=RUN_FN)
    assert sorted(o.ok for o in outcomes.values()) == [False, True, True]
    assert checks == [None] * 3
    monkeypatch.setattr(runtime, "WORKER", True)  # as configure(worker=True) sets it in a pool or Ray worker
    run_sweep(make_tasks(tmp_path / "w", 2), ResultStore(tmp_path / "w"), workers=1, run_fn=RUN_FN)
    assert checks[3:] == [runtime.RETAIN_BYTES] * 2
