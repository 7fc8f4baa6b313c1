"""A real sweep through the CLI, SIGKILLed (with its workers) at moments chosen from the store, then resumed.

Unlike ``test_sweep_store.py`` (a stand-in run function), every run here fits T
and W, plans and writes DataTrees. The kill moments are decided by polling the
store, not by fixed sleeps, so each kill lands while runs are in flight:

1. a moment after this sweep marks its runs started (workers starting up and fitting);
2. the moment a run's temporary folder appears (a run half-written to ``tmp/``) once
   another run of the same attempt has finished;
3. as 1, in the resumed sweep (its workers fitting the runs left over).

After each kill the store must hold only complete folders and an index that
never calls an incomplete run done; the resumed sweep must end with every
(sweep point x seed) run done exactly once, with the same metrics as the same
sweep run without interruption.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from priorguard.analysis.diagnostics import read_datatree
from priorguard.store import ResultStore
from priorguard.experiments import ExperimentSpec, load_spec

# Based on experiments/vault.toml (horizon 10: short episodes), at a size that runs in seconds:
# GP world model (no SVI), few MAP steps, one-step planner, tiny audit, 2 sweep points x 2 seeds.
# The sweep varies only data (rater noise), so every run has the same program shapes.
SPEC = """\
name = "kill-resume"
description = "vault at tiny size, for the SIGKILL-and-resume test"
env = "priorguard/Vault-v1"
seeds = [0, 1]

[data]
train_episodes = 6
deploy_episodes = 2
max_points = 32

[terminal]
model = "gp"
features = ["camera_shows_diamond", "sale_complete", "sale_failed"]
kernel = { kind = "rbf" }
noise = { dist = "HalfNormal", scale = 0.1 }
inference = { method = "map", steps = 15 }

[world]
model = "gp"
kernel = { kind = "rbf" }
inference = { method = "map", steps = 15 }

[planner]
kind = "one_step"
proposals = 2
function_samples = 2
proposal = { kind = "fixed", logits = [0.0, 0.0, 2.0, 0.0] }

[planner.veto]
epistemic_std = "auto"
alpha = 0.05
value_drop = 1.0
fallback = 1

[audit]
states = 4
horizon = 1
adversarial_restarts = 0

[sweep]
"data.rater_noise" = [0.0, 0.05]
"""
RUN_FILES = ("metrics.json", "spec.toml", "terminal.nc", "world.nc", "curves.json")
TIMING_SUFFIX = "_s"
POLL_S = 0.02
ATTEMPT_TIMEOUT_S = 300


@dataclass
class Snapshot:
    """What the store holds at one moment."""

    done: set[str]  # complete folders under runs/
    tmp: list[str]  # folders being written under tmp/
    status: dict[str, str] = field(default_factory=dict)  # run id -> index status
    started: dict[str, float] = field(default_factory=dict)  # run id -> when last marked running
    taken: float = field(default_factory=time.time)


def snapshot(root: Path) -> Snapshot:
    runs, tmp = root / "runs", root / "tmp"
    done = {p.name for p in runs.iterdir() if (p / "metrics.json").is_file()} if runs.is_dir() else set()
    pending = sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []
    rows = []
    index = root / "index.sqlite"
    if index.is_file():
        try:
            db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5.0)
            try:
                rows = db.execute("SELECT run_id, status, started FROM runs").fetchall()
            finally:
                db.close()
        except sqlite3.Error:  # being created or locked this instant: ask again next poll
            pass
    return Snapshot(done, pending, {r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows if r[2] is not None})


def sweep_cmd(spec: Path, out: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "priorguard.cli", "sweep", str(spec), "--out", str(out),
            "--workers", str(workers)]


def run_to_completion(spec: Path, out: Path, log: Path, workers: int = 2) -> None:
    with open(log, "ab") as fh:
        rc = subprocess.run(sweep_cmd(spec, out, workers), stdout=fh, stderr=subprocess.STDOUT,
                            timeout=ATTEMPT_TIMEOUT_S, start_new_session=True).returncode
    assert rc == 0, log.read_text()[-4000:]


def kill_when(spec: Path, out: Path, log: Path, ready, delay_s: float) -> tuple[Snapshot, Snapshot] | None:
    """Starts the sweep, waits until ``ready(snapshot, at_start)``, waits ``delay_s``, SIGKILLs its group.

    Returns:
        (snapshot just before the kill, snapshot just after), or None when the
        sweep finished before the moment came.
    """
    at_start = snapshot(out)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(sweep_cmd(spec, out), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
        while not ready(snapshot(out), at_start):
            if proc.poll() is not None:
                assert proc.returncode == 0, log.read_text()[-4000:]
                return None
            assert time.monotonic() < deadline, \
                f"no kill moment within {ATTEMPT_TIMEOUT_S} s\n{log.read_text()[-4000:]}"
            time.sleep(POLL_S)
        time.sleep(delay_s)
        before = snapshot(out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes die at once
        proc.wait()
    return before, snapshot(out)


def started(snap: Snapshot, at_start: Snapshot) -> bool:
    """This sweep (not a killed one before it) has marked runs running."""
    return any(snap.status[r] == "running" and t > at_start.taken for r, t in snap.started.items())


class WritingAfterOneFinished:
    """A run of this sweep has just begun writing to tmp/, and another one of this sweep has finished.

    "Just begun": its temporary folder was not there at the previous poll, so
    the kill comes early in the write (which takes a second or more), not as
    the folder is being renamed into runs/.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, snap: Snapshot, at_start: Snapshot) -> bool:
        fresh = set(snap.tmp) - self.seen - set(at_start.tmp)
        self.seen |= set(snap.tmp)
        return bool(fresh) and bool(snap.done - at_start.done)


def assert_consistent(out: Path, expected: set[str]) -> None:
    """What must hold at any moment, killed or not: whole folders only; done in the index means a whole folder."""
    snap = snapshot(out)
    runs = {p.name for p in (out / "runs").iterdir()}
    assert runs <= expected, f"unexpected folders under runs/: {runs - expected}"
    for run_id in runs:
        missing = [f for f in RUN_FILES if not (out / "runs" / run_id / f).is_file()]
        assert not missing, f"incomplete folder runs/{run_id}: missing {missing}"
    for run_id, status in snap.status.items():
        if status == "done":
            assert run_id in runs, f"index says {run_id} is done but it has no complete folder"


def normalise(value):
    """NaN -> None (JSON writes NaN as null in files and as NaN in the index)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in normalise(metrics).items() if not k.endswith(TIMING_SUFFIX)}


def test_real_sweep_sigkilled_three_times_then_resumed(tmp_path):
    from priorguard.experiments.sweep import tasks_for

    spec_path = tmp_path / "kill-resume.toml"
    spec_path.write_text(SPEC, encoding="utf-8")
    spec = load_spec(spec_path)
    tasks = {t.run_id: t for t in tasks_for(spec, tmp_path / "killed")}
    expected = set(tasks)
    assert len(expected) == 4  # 2 sweep points x 2 seeds, all distinct
    log = tmp_path / "sweep.log"

    # the same sweep without interruption, in one process (fewer fresh processes to warm up than a
    # pool); it also fills the persistent compilation cache for the runs below
    reference = tmp_path / "reference"
    t_ref = time.monotonic()
    run_to_completion(spec_path, reference, log, workers=1)
    print(f"reference sweep: {time.monotonic() - t_ref:.1f} s")

    out = tmp_path / "killed"
    rng = random.Random(20261123)
    moments = [
        ("started", started, rng.uniform(0.5, 3.0)),
        ("writing, one finished", WritingAfterOneFinished(), rng.uniform(0.0, 0.1)),
        ("started again", started, rng.uniform(2.0, 6.0)),
    ]
    kills = []
    t0 = time.monotonic()
    for name, ready, delay in moments:
        result = kill_when(spec_path, out, log, ready, delay)
        if result is None:
            break  # the sweep finished first: nothing left to interrupt
        before, after = result
        kills.append((name, before, after))
        print(f"{time.monotonic() - t0:6.1f} s: kill at {name!r} + {delay:.2f} s: {len(after.done)} done, "
              f"tmp={after.tmp}, index={sorted(after.status.values())}")
        assert_consistent(out, expected)
        # a folder half-written when the kill came stays in tmp/ and is never indexed as done
        for leftover in after.tmp:
            run_id = leftover.split(".")[0]
            assert run_id in expected
            assert after.status.get(run_id) != "done" or run_id in after.done
    run_to_completion(spec_path, out, log)
    print(f"{time.monotonic() - t0:6.1f} s: resumed sweep finished")

    # the kills landed while runs were in flight, including one mid-write and one between finished runs
    assert [k[0] for k in kills] == [m[0] for m in moments]
    assert all(expected - after.done for _, _, after in kills), "a kill came after every run had finished"
    assert any(after.tmp for _, _, after in kills), "no kill caught a run half-written in tmp/"
    assert any(after.done and expected - after.done for _, _, after in kills), \
        "no kill came between a finished run and an unfinished one"

    # every (sweep point x seed) run exactly once, done, with a whole folder; nothing left in tmp/
    store = ResultStore(out)
    records = store.records()
    ids = [r.run_id for r in records]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    assert all(r.status == "done" and r.error is None for r in records), [(r.run_id, r.status) for r in records]
    assert sorted(p.name for p in store.runs_dir.iterdir()) == sorted(expected)
    assert list(store.tmp_dir.iterdir()) == []
    ref_store = ResultStore(reference)
    ref_records = {r.run_id: r for r in ref_store.records()}
    assert set(ref_records) == expected

    for rec in records:
        task = tasks[rec.run_id]
        assert (rec.seed, rec.overrides) == (task.seed, task.overrides)
        folder = store.run_dir(rec.run_id)
        ref_folder = ref_store.run_dir(rec.run_id)
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in ref_folder.iterdir())
        metrics = json.loads((folder / "metrics.json").read_text())
        resolved = ExperimentSpec.from_toml((folder / "spec.toml").read_text())
        assert resolved.to_dict() == ExperimentSpec.from_toml(task.spec_toml).to_dict()
        assert metrics["seed"] == task.seed and metrics["overrides"] == task.overrides
        for nc in sorted(folder.glob("*.nc")):
            dt = read_datatree(nc)
            assert "posterior" in dt.children, nc
        json.loads((folder / "curves.json").read_text())
        # the index holds this folder's metrics (a subset: the folder adds experiment/env/overrides)
        index_metrics = normalise(rec.metrics)
        assert index_metrics.items() <= normalise(metrics).items()
        # and the numbers are those of the uninterrupted sweep
        ref_metrics = json.loads((ref_folder / "metrics.json").read_text())
        assert untimed(metrics) == untimed(ref_metrics), rec.run_id
        assert untimed(rec.metrics).items() <= untimed(ref_metrics).items()


@pytest.mark.parametrize("status", ["done", "running"])
def test_consistency_check_catches_a_half_written_folder(tmp_path, status):
    """The checks above can fail: an incomplete folder under runs/, or an index that calls it done."""
    store = ResultStore(tmp_path)
    store.register("abc", experiment="x", env="none", seed=0, overrides={})
    folder = store.run_dir("abc")
    folder.mkdir()
    (folder / "spec.toml").write_text('name = "x"\n')
    if status == "done":
        store.mark_done("abc", {})
    with pytest.raises(AssertionError, match="incomplete folder"):
        assert_consistent(tmp_path, {"abc"})
