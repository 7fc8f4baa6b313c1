"""Result store and sweep machinery with a stand-in run: atomicity, resume, failures, SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from priorguard.experiments.store import ResultStore, run_id_for
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
    from priorguard.experiments.store import ResultStore
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
