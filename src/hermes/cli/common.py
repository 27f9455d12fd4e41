"""What the commands share: the two consoles, failing with a message, reading run files,
writing JSON, comma-separated options, and the tables more than one command prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hermes.core.runs import AppRun, RunFormatError
from hermes.workloads.run_files import read_runs

out = Console(soft_wrap=True)
err = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    # escape: a message quotes paths and values, whose brackets are not markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def run_files(paths: list[Path]) -> list[Path]:
    """The files `paths` name, a directory standing for every `*.jsonl` in it (sorted)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.glob("*.jsonl") if f.is_file())
            if not found:
                raise fail(f"{p}: a directory with no *.jsonl run file in it")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise fail(f"{p}: no such file or directory")
    return files


def read_all(paths: list[Path]) -> list[AppRun]:
    """Every run in `paths`: run files, or directories of them (`run_files`)."""
    runs: list[AppRun] = []
    for p in run_files(paths):
        try:
            runs.extend(read_runs(p))
        except RunFormatError as e:
            raise fail(str(e)) from None
        except RecursionError:  # json's parser recurses per level: ~1,000 exhaust it
            raise fail(f"{p}: a line nests its JSON too deeply to read") from None
        except OSError as e:  # unreadable: permissions, a device
            raise fail(os_error(e, p)) from None
    return runs


def os_error(e: OSError, path: Path | str | None = None) -> str:
    """`e` as one line naming its path: "PATH: No such file or directory", not a bare
    "[Errno 2] ..."."""
    where = e.filename if e.filename is not None else path
    why = e.strerror or str(e) or type(e).__name__
    return f"{where}: {why}" if where is not None else why


def listen_error(e: OSError, host: str, port: int) -> str:
    """A server's OSError as one line; a socket that cannot be bound names its address."""
    import errno
    import socket

    if isinstance(e, socket.gaierror) or e.errno in (
        errno.EADDRINUSE,
        errno.EACCES,
        errno.EADDRNOTAVAIL,
    ):
        return f"cannot listen on {host}:{port}: {e.strerror}"
    return os_error(e)


def writable(path: Path, option: str) -> None:
    """Fail unless `path` names a file in a folder that exists (a typo in the folder is an
    error, not a new tree of folders)."""
    if path.is_dir():
        raise fail(f"{option}: {path}: is a directory, expected a file")
    if not path.parent.is_dir():
        raise fail(f"{option}: {path}: the folder {path.parent} does not exist")


def writable_dir(path: Path, option: str) -> None:
    """Make the output folder `path` now, failing with a message if it cannot be: before a
    long run, not after it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise fail(f"{option}: {path}: is a file, expected a folder") from None
    except OSError as e:
        raise fail(f"{option}: {os_error(e, path)}") from None


def written(write: Callable[[], list[Path]]) -> list[Path]:
    """The paths `write` wrote; its OSError (a full disk, a folder made read-only meanwhile)
    as a message."""
    try:
        return write()
    except OSError as e:
        raise fail(os_error(e)) from None


def write_json(path: Path, data: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise fail(os_error(e, path)) from None
    out.print(f"results written to {escape(str(path))}")


def floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise fail(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise fail(f"{option}: expected positive numbers, got {text!r}")
    return values


def print_recorded(r: dict[str, Any]) -> None:
    table = Table(title="application completion time, s")
    for col in ("policy", "apps", "mean", "p50", "p95", "p99", "deadlines met"):
        table.add_column(col)
    for name, row in r["policies"].items():
        dsr = row["dsr"]
        table.add_row(
            name,
            str(row["apps"]),
            *(
                f"{row[k]:.2f}" if row[k] is not None else "-"
                for k in ("act_mean", "act_p50", "act_p95", "act_p99")
            ),
            "-" if dsr is None else f"{100 * dsr:.1f} %",
        )
    out.print(table)


def print_targets(r: dict[str, Any], group: str | None = None, name: str = "") -> None:
    """The run's targets as a table; `group` names an extra first column."""
    table = Table(title=f"{name + ' ' if name else ''}targets ({r['wall_s']:.0f} s)")
    for col in ([group] if group else []) + ["target", "measured", "goal", "met"]:
        table.add_column(col)
    for t in r["targets"]:
        v = t["measured"]
        met = "-" if t["met"] is None else ("yes" if t["met"] else "[red]no[/]")
        cells = [escape(t["target"]), "-" if v is None else f"{v:.3f}", t["goal"], met]
        table.add_row(*([escape(str(t[group]))] if group else []), *cells)
    out.print(table)
