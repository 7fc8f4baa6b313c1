"""A result store that cannot be made or read: a clear error, exit 2; an index rebuilt from the run folders."""

from __future__ import annotations

import json
import subprocess
import sys

from priorguard.store import ResultStore


def cli(*args):
    return subprocess.run([sys.executable, "-m", "priorguard.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _done_run(store: ResultStore, run_id: str, seed: int, overrides: dict) -> None:
    store.register(run_id, experiment="demo", env="priorguard/CoinShift-v1", seed=seed, overrides=overrides)
    with store.writing(run_id) as folder:
        (folder / "metrics.json").write_text(json.dumps({"regret": 0.1 * seed, "seed": seed, "experiment": "demo",
                                                         "env": "priorguard/CoinShift-v1", "overrides": overrides}))
    store.mark_done(run_id, {"regret": 0.1 * seed})


def test_an_index_that_is_not_a_database_or_an_out_that_cannot_be_made_exit_2(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.sqlite").write_bytes(bytes(range(256)) * 16)
    (tmp_path / "afile").write_text("")
    for args, words in ((["runs", tmp_path / "bad"], "not a result store's index"),
                        (["report", tmp_path / "bad"], "not a result store's index"),
                        (["run", "coin-shift", "--out", tmp_path / "afile" / "sub"], "cannot make the result store")):
        r = cli(*args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_lost_index_is_rebuilt_from_the_run_folders_and_a_damaged_folder_is_made_again(tmp_path):
    store = ResultStore(tmp_path)
    _done_run(store, "a" * 16, 0, {"x": 1})
    _done_run(store, "b" * 16, 1, {"x": 2})
    _done_run(store, "c" * 16, 2, {"x": 3})
    (tmp_path / "index.sqlite").unlink()
    (store.run_dir("c" * 16) / "metrics.json").write_text('{"regret": 0.')  # truncated
    again = ResultStore(tmp_path)
    again.reconcile()
    records = {r.run_id: r for r in again.records()}
    assert {r.status for r in records.values()} == {"done"} and set(records) == {"a" * 16, "b" * 16}
    assert records["b" * 16].overrides == {"x": 2} and records["b" * 16].seed == 1
    assert not again.run_dir("c" * 16).exists()  # moved out of runs/: that run is made again
    again.register("c" * 16, experiment="demo", env="e", seed=2, overrides={"x": 3})
    again.reconcile()
    assert {r.run_id: r.status for r in again.records()}["c" * 16] == "pending"
