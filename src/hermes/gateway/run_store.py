"""Finished applications as runs (format v1) in an embedded SQLite file, so that the demand
graphs learned in production survive restarts.

The store keeps runs, not graphs: a graph is relearned from the runs at start-up (a PDGraph
keeps only a window of recent runs anyway), and the format stays the one `hermes learn` reads.
Applications still in progress when the gateway stopped are kept too, marked unfinished: they
are evidence for an operator, not demand to learn from (a cut-off run would bias it low).

The file runs in WAL mode: readers (`hermes learn --store`, an operator's sqlite3) do not block
the gateway's writes, and a write survives the gateway being killed once it has committed. The
gateway writes from a thread of its own (`outbox`), never on the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hermes.core.pdgraph import PDGraph, learn
from hermes.core.runs import AppRun, run_from_dict, run_to_dict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    run_id TEXT NOT NULL,
    stored_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_app ON runs (app, seq);
"""
# Added after the first release: stores written before it hold finished runs only.
_FINISHED_COLUMN = "ALTER TABLE runs ADD COLUMN finished INTEGER NOT NULL DEFAULT 1"
# How long a write waits for another connection's lock before it fails (and is retried).
BUSY_TIMEOUT_S = 2.0


class RunStore:
    def __init__(self, path: str | Path, timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way, no permission
            raise ValueError(f"{self.path}: not a usable run store: {e}") from None
        # One connection shared by the event loop (reads at start-up) and the outbox's writer
        # thread; the lock keeps their statements apart.
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout_s, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
            if "finished" not in columns:
                with self._db:
                    self._db.execute(_FINISHED_COLUMN)
        except sqlite3.Error as e:
            raise ValueError(f"{self.path}: not a usable run store: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def add(self, runs: Iterable[AppRun], finished: bool = True) -> int:
        """Append `runs` in one transaction (all or none); how many."""
        return self.add_marked((r, finished) for r in runs)

    def add_marked(self, runs: Iterable[tuple[AppRun, bool]]) -> int:
        """Append `(run, finished)` pairs in one transaction (all or none); how many."""
        now = time.time()
        rows = [
            (r.app, r.run_id, now, json.dumps(run_to_dict(r), separators=(",", ":")), int(done))
            for r, done in runs
        ]
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO runs (app, run_id, stored_at, body, finished) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def count(self, finished: bool | None = None) -> int:
        """How many runs it holds (only the finished or unfinished ones, if asked)."""
        with self._lock:
            if finished is None:
                row = self._db.execute("SELECT COUNT(*) FROM runs").fetchone()
            else:
                sql = "SELECT COUNT(*) FROM runs WHERE finished = ?"
                row = self._db.execute(sql, (int(finished),)).fetchone()
        return int(row[0])

    def runs(self, limit_per_app: int | None = None, finished: bool = True) -> list[AppRun]:
        """The finished (or unfinished) runs in the order stored; the newest `limit_per_app`
        of each type, if given."""
        with self._lock:
            if limit_per_app is None:
                rows = self._db.execute(
                    "SELECT seq, body FROM runs WHERE finished = ? ORDER BY seq", (int(finished),)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT seq, body FROM ("
                    " SELECT seq, body,"
                    " ROW_NUMBER() OVER (PARTITION BY app ORDER BY seq DESC) AS k"
                    " FROM runs WHERE finished = ?) WHERE k <= ? ORDER BY seq",
                    (int(finished), limit_per_app),
                ).fetchall()
        out = []
        for seq, body in rows:
            try:
                out.append(run_from_dict(json.loads(body)))
            except (ValueError, RecursionError) as e:
                raise ValueError(f"{self.path}: stored run #{seq} is unreadable: {e}") from None
        return out

    def graphs(self, window: int = 1000) -> dict[str, PDGraph]:
        """PDGraphs learned from the newest `window` finished runs of each application type."""
        return learn(self.runs(limit_per_app=window), window=window)


# The reading side: a store opened read-only, for `hermes runs` and `hermes learn STORE`, so
# that reading never creates, migrates or locks out the gateway's store.

_SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite_file(path: str | Path) -> bool:
    """Whether `path` is a file that starts as every SQLite database does."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class StoredRun:
    """One row of a store: the run, whether it finished, and when it was stored (Unix s)."""

    seq: int
    run: AppRun
    finished: bool
    stored_at: float


def read_store(path: str | Path, finished: bool | None = True) -> list[StoredRun]:
    """The runs of the store at `path` in the order stored: the finished ones, the unfinished
    ones (`finished=False`) or all (`None`). Raises ValueError naming the path and what is wrong
    (missing, not SQLite, no runs table, corrupt, a run unreadable)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such run store (not a file)")
    if not is_sqlite_file(p):
        raise ValueError(f"{p}: not a run store (not an SQLite database)")
    try:
        db = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        raise ValueError(f"{p}: cannot open the run store: {e}") from None
    try:
        return _read_rows(db, p, finished)
    except sqlite3.DatabaseError as e:  # corrupt pages, a locked or unreadable file
        raise ValueError(f"{p}: not a readable run store: {e}") from None
    finally:
        db.close()


def _read_rows(db: sqlite3.Connection, p: Path, finished: bool | None) -> list[StoredRun]:
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if not {"seq", "body", "stored_at"} <= columns:
        raise ValueError(f"{p}: not a run store (no `runs` table with runs in it)")
    # Stores of the first release hold finished runs only, and have no `finished` column.
    done = "finished" if "finished" in columns else "1"
    sql = f"SELECT seq, body, {done}, stored_at FROM runs"
    if finished is not None:
        sql += f" WHERE {done} = {int(finished)}"
    out = []
    for seq, body, is_done, stored_at in db.execute(sql + " ORDER BY seq"):
        try:
            run = run_from_dict(json.loads(body))
        except (ValueError, TypeError, RecursionError) as e:
            raise ValueError(f"{p}: stored run #{seq} is unreadable: {e}") from None
        out.append(StoredRun(int(seq), run, bool(is_done), float(stored_at)))
    return out
