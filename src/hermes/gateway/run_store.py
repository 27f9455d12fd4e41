"""Finished applications as runs (format v1) in an embedded SQLite file, so that the demand
graphs learned in production survive restarts.

The store keeps runs, not graphs: a graph is relearned from the runs at start-up (a PDGraph
keeps only a window of recent runs anyway), and the format stays the one `hermes learn` reads.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
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


class RunStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a usable run store: {e}") from None

    def close(self) -> None:
        self._db.close()

    def add(self, runs: Iterable[AppRun]) -> int:
        rows = [
            (r.app, r.run_id, time.time(), json.dumps(run_to_dict(r), separators=(",", ":")))
            for r in runs
        ]
        with self._db:
            self._db.executemany(
                "INSERT INTO runs (app, run_id, stored_at, body) VALUES (?, ?, ?, ?)", rows
            )
        return len(rows)

    def count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM runs").fetchone()
        return int(row[0])

    def runs(self, limit_per_app: int | None = None) -> list[AppRun]:
        """Every stored run in the order stored (the newest `limit_per_app` of each type)."""
        if limit_per_app is None:
            rows = self._db.execute("SELECT seq, body FROM runs ORDER BY seq").fetchall()
        else:
            rows = self._db.execute(
                "SELECT seq, body FROM ("
                " SELECT seq, body, ROW_NUMBER() OVER (PARTITION BY app ORDER BY seq DESC) AS k"
                " FROM runs) WHERE k <= ? ORDER BY seq",
                (limit_per_app,),
            ).fetchall()
        out = []
        for seq, body in rows:
            try:
                out.append(run_from_dict(json.loads(body)))
            except ValueError as e:
                raise ValueError(f"{self.path}: stored run #{seq} is unreadable: {e}") from None
        return out

    def graphs(self, window: int = 1000) -> dict[str, PDGraph]:
        """PDGraphs learned from the newest `window` runs of each application type."""
        return learn(self.runs(limit_per_app=window), window=window)
