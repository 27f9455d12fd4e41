"""Reading and writing application-run files (format v1, JSON Lines)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from hermes.core.runs import AppRun, RunFormatError, run_from_dict, run_to_dict


def read_runs(path: str | Path) -> list[AppRun]:
    """Every run in a JSON Lines file, in file order.

    A line that breaks format v1 raises ``RunFormatError`` naming the file, the line and the
    rule; nothing is dropped or clipped. Blank lines are allowed between runs.
    """
    path = Path(path)
    runs: list[AppRun] = []
    first_line_of: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RunFormatError(
            f"not UTF-8 text ({e.reason} at byte {e.start})", location=str(path)
        ) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunFormatError(
                f"not valid JSON ({e.msg} at column {e.colno})", location=where
            ) from None
        try:
            run = run_from_dict(obj)
        except RunFormatError as e:
            raise e.located(where) from None
        if run.run_id in first_line_of:
            raise RunFormatError(
                f"run_id {run.run_id!r} repeats the one on line {first_line_of[run.run_id]}"
                " (run_id must be unique within a file)",
                location=where,
            )
        first_line_of[run.run_id] = lineno
        runs.append(run)
    return runs


def write_runs(path: str | Path, runs: Iterable[AppRun]) -> int:
    """Write runs as JSON Lines; returns how many were written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for run in runs:
            f.write(json.dumps(run_to_dict(run), separators=(",", ":")))
            f.write("\n")
            n += 1
    return n
