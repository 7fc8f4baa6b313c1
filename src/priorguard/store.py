"""Result store: one folder per run, written atomically, indexed in SQLite.

Layout under the store root::

    index.sqlite            run id, experiment, seed, overrides, status, metrics, timings
    .lock                   held by the one sweep writing to the store (see ResultStore.exclusive)
    runs/<run_id>/          spec.toml, metrics.json, *.nc (DataTrees), *.png, calibration.json
    tmp/                    runs being written (renamed into runs/ when complete)

A run folder appears under ``runs/`` only by an atomic rename of a complete
folder, so a folder there is always whole; the index is reconciled from the
folders on open, so a store killed at any moment resumes without losing or
duplicating a finished run. Results are data (TOML, JSON, netCDF, PNG): never pickle.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    env        TEXT NOT NULL,
    seed       INTEGER NOT NULL,
    overrides  TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    metrics    TEXT,
    error      TEXT,
    started    REAL,
    finished   REAL
);
"""


class StoreBusyError(RuntimeError):
    """Another sweep holds the result store (:meth:`ResultStore.exclusive`)."""


class StoreError(ValueError):
    """The result store cannot be made or read (the message says what and what to do)."""


def run_id_for(spec_dict: Mapping[str, Any], seed: int, env_version: int | str) -> str:
    """A run's id: a hash of the resolved spec (without seeds and sweep), seed and env version."""
    body = {k: v for k, v in spec_dict.items() if k not in ("seeds", "sweep", "description")}
    text = json.dumps({"spec": body, "seed": seed, "env_version": env_version}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    """One row of the index."""

    run_id: str
    experiment: str
    env: str
    seed: int
    overrides: dict[str, Any]
    status: str
    metrics: dict[str, Any] | None
    error: str | None
    started: float | None
    finished: float | None

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


class ResultStore:
    """A folder of runs with a SQLite index.

    Args:
        root: the store folder (created if missing).

    Example:
        >>> import tempfile
        >>> store = ResultStore(tempfile.mkdtemp())
        >>> with store.writing("abc") as folder:
        ...     _ = (folder / "metrics.json").write_text("{}")
        >>> store.is_done("abc")
        True
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.tmp_dir = self.root / "tmp"
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot make the result store {self.root}: {exc.strerror}"
                             f" ({exc.filename}); choose another --out") from None
        self.index_path = self.root / "index.sqlite"
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.index_path, timeout=60.0)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:  # locked, busy: not a damaged index
            raise
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.index_path} is not a result store's index ({exc}); move it away (the"
                             f" next `priorguard sweep` into {self.root} indexes its run folders again), or"
                             f" choose another --out") from None
        try:
            db.execute("PRAGMA busy_timeout=60000")
            with db:
                yield db
        finally:
            db.close()

    # --- folders ---------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def is_done(self, run_id: str) -> bool:
        """A run is done exactly when its complete folder is in ``runs/``."""
        return (self.run_dir(run_id) / "metrics.json").is_file()

    @contextmanager
    def writing(self, run_id: str) -> Iterator[Path]:
        """A temporary folder that becomes ``runs/<run_id>`` atomically on success.

        On an exception the temporary folder is removed and nothing appears.
        """
        tmp = self.tmp_dir / f"{run_id}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            sums = {f.relative_to(tmp).as_posix(): _file_digest(f) for f in sorted(tmp.rglob("*"))
                    if f.is_file() and f.relative_to(tmp).as_posix() != CHECKSUMS}  # a shipped copy is redone
            (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True), encoding="utf-8")
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            final = self.run_dir(run_id)
            if final.exists():  # a duplicate finisher: keep the first, complete one
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, final)
                _fsync_dir(final.parent)  # the rename itself survives a crash
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def damaged_files(self, run_id: str) -> list[str]:
        """Files of a run folder that are missing or differ from what was written (by the
        ``checksums.json`` written with the folder; a folder without it is not checked)."""
        folder = self.run_dir(run_id)
        path = folder / CHECKSUMS
        if not path.is_file():
            return []
        try:
            sums = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(sums, dict):
                raise ValueError(CHECKSUMS)
        except (ValueError, UnicodeDecodeError):
            return [CHECKSUMS]
        return sorted(name for name, digest in sums.items()
                      if not (folder / name).is_file() or _file_digest(folder / name) != digest)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds the store for one sweep: a second sweep on the same store raises :class:`StoreBusyError`.

        Two sweeps on one store would each clear the other's half-written runs
        (:meth:`reconcile`) and race on the index. The lock is an advisory
        ``flock`` on ``.lock`` in the store, released when the sweep ends or
        its process dies; the pid of its holder is written there. On a file
        system without locks the sweep runs unlocked.
        """
        path = self.root / ".lock"
        with open(path, "a+") as fh:
            locked = True
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise StoreBusyError(
                        f"another sweep (pid {holder}) is writing to the result store {self.root}; "
                        "wait for it to finish, or give this one another --out folder"
                    ) from None
                locked = False  # no locks on this file system (some network file systems)
            try:
                if locked:
                    fh.seek(0)
                    fh.truncate()
                    fh.write(str(os.getpid()))
                    fh.flush()
                yield
            finally:
                if locked:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # --- index -----------------------------------------------------------------

    def register(self, run_id: str, *, experiment: str, env: str, seed: int, overrides: Mapping[str, Any]) -> None:
        """Adds a pending run (no-op when the run is already indexed)."""
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs (run_id, experiment, env, seed, overrides, status)"
                " VALUES (?, ?, ?, ?, ?, 'pending')",
                (run_id, experiment, env, seed, json.dumps(dict(overrides), sort_keys=True, default=str)),
            )

    def mark_running(self, run_id: str) -> None:
        with self._db() as db:
            db.execute("UPDATE runs SET status='running', started=?, error=NULL WHERE run_id=?",
                       (time.time(), run_id))

    def mark_done(self, run_id: str, metrics: Mapping[str, Any], *, started: float | None = None,
                  finished: float | None = None) -> None:
        """Marks a run done; ``started``/``finished`` (the worker's clock) replace the queue-time start."""
        with self._db() as db:
            db.execute("UPDATE runs SET status='done', metrics=?, finished=?, started=COALESCE(?, started),"
                       " error=NULL WHERE run_id=?",
                       (json.dumps(dict(metrics), sort_keys=True, default=_json_default), finished or time.time(),
                        started, run_id))

    def mark_failed(self, run_id: str, error: str, *, started: float | None = None,
                    finished: float | None = None) -> None:
        with self._db() as db:
            db.execute("UPDATE runs SET status='failed', error=?, finished=?, started=COALESCE(?, started)"
                       " WHERE run_id=?", (error, finished or time.time(), started, run_id))

    def reconcile(self) -> dict[str, list[str]]:
        """Brings the index in line with the folders after an interruption.

        Complete folders are marked done (metrics read from them); runs marked
        done or running without a folder go back to pending; stale temporary
        folders are removed; folders whose files changed since they were written
        move to ``tmp/`` and their runs go back to pending, to be made again.

        Returns:
            The damaged runs: run id -> the files that changed or went missing.
        """
        for tmp in self.tmp_dir.iterdir():
            shutil.rmtree(tmp, ignore_errors=True)
        damaged = {}
        for folder in sorted(self.runs_dir.iterdir()):
            bad = self.damaged_files(folder.name)
            if bad:
                damaged[folder.name] = bad
                os.rename(folder, self.tmp_dir / f"{folder.name}.damaged.{uuid.uuid4().hex[:8]}")
        with self._db() as db:
            rows = dict(db.execute("SELECT run_id, status FROM runs").fetchall())
        for folder in sorted(self.runs_dir.iterdir()):  # folders the index lost (index.sqlite removed)
            metrics = self._folder_metrics(folder.name) if folder.name not in rows else None
            if metrics is not None and {"experiment", "seed"} <= metrics.keys():
                self.register(folder.name, experiment=str(metrics["experiment"]), env=str(metrics.get("env", "")),
                              seed=int(metrics["seed"]), overrides=metrics.get("overrides") or {})
                rows[folder.name] = "pending"
        for run_id, status in rows.items():
            metrics = self._folder_metrics(run_id)
            if metrics is not None and status != "done":
                # the index holds the run's metrics; the folder's copy also names the run
                self.mark_done(run_id, {k: v for k, v in metrics.items() if k not in _FOLDER_ONLY_KEYS})
            elif metrics is None and status in ("done", "running"):
                with self._db() as db:
                    db.execute("UPDATE runs SET status='pending' WHERE run_id=?", (run_id,))
        return damaged

    def _folder_metrics(self, run_id: str) -> dict[str, Any] | None:
        """A run folder's metrics, or None when it has none; a damaged folder (metrics.json that
        does not parse) is moved out of ``runs/`` into ``tmp/``, so that the run is made again."""
        path = self.run_dir(run_id) / "metrics.json"
        if not path.is_file():
            return None
        try:
            metrics = json.loads(path.read_text())
            if isinstance(metrics, dict):
                return metrics
        except (ValueError, UnicodeDecodeError):
            pass
        os.rename(self.run_dir(run_id), self.tmp_dir / f"{run_id}.damaged.{uuid.uuid4().hex[:8]}")
        return None

    def records(self, *, experiment: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Index rows, optionally filtered, oldest first."""
        query = "SELECT run_id, experiment, env, seed, overrides, status, metrics, error, started, finished FROM runs"
        clauses, args = [], []
        if experiment is not None:
            clauses.append("experiment = ?")
            args.append(experiment)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY experiment, overrides, seed"
        with self._db() as db:
            rows = db.execute(query, args).fetchall()
        return [
            RunRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6]) if r[6] else None,
                      r[7], r[8], r[9])
            for r in rows
        ]


#: Keys of a run folder's metrics.json that describe the run rather than measure it.
_FOLDER_ONLY_KEYS = ("overrides", "experiment", "env")


#: Written into every run folder: the SHA-256 of each of its files, checked on resume and report.
CHECKSUMS = "checksums.json"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):  # some file systems cannot sync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(obj)


def write_json(path: Path, data: Any) -> None:
    """JSON with numpy scalars/arrays converted; NaN written as null."""
    text = json.dumps(_nan_to_none(data), indent=2, sort_keys=True, default=_json_default)
    path.write_text(text + "\n", encoding="utf-8")


def _nan_to_none(obj: Any) -> Any:
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj
