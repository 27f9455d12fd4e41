"""`hermes runs`: the gateway's run store in the open. `export` writes its runs as a runs file
(format v1, docs/app-trace-format.md) and `stats` says what it holds. The store is opened
read-only, so both are safe while a gateway writes to it."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hermes.cli.common import fail, out, read_all
from hermes.core.runs import AppRun
from hermes.gateway.run_store import StoredRun, is_sqlite_file, read_store
from hermes.workloads.run_files import write_runs

runs_app = typer.Typer(
    help="Read the gateway's run store (SQLite): export its runs, or count what it holds.",
    no_args_is_help=True,
)

StoreArg = Annotated[
    Path, typer.Argument(metavar="STORE", help="The gateway's run store (its `run_store` file).")
]


def load_store(path: Path, finished: bool | None) -> list[StoredRun]:
    """The store's runs, or a clear error (never a traceback) naming the path."""
    try:
        return read_store(path, finished=finished)
    except ValueError as e:
        raise fail(str(e)) from None


@runs_app.command("export")
def export(
    store: StoreArg,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Runs file to write (JSON Lines, format v1).")
    ] = Path("runs.jsonl"),
    unfinished: Annotated[
        bool,
        typer.Option(
            "--unfinished",
            help="Export the runs cut off when the gateway stopped instead of the finished "
            "ones (evidence, not demand to learn from).",
        ),
    ] = False,
    app: Annotated[
        str | None, typer.Option("--app", metavar="TYPE", help="Only runs of this type.")
    ] = None,
) -> None:
    """Write the store's finished runs as a runs file (format v1), as `hermes learn` reads."""
    rows = load_store(store, finished=not unfinished)
    runs = [r.run for r in rows if app is None or r.run.app == app]
    if output.exists() and is_sqlite_file(output):
        raise fail(f"-o {output}: is a run store; refusing to overwrite it")
    if not output.parent.is_dir():
        raise fail(f"-o {output}: the folder {output.parent} does not exist")
    # Run ids repeat across restarts only if a client reuses an application id; a runs file
    # needs them unique, so later copies are numbered.
    seen: dict[str, int] = {}
    renamed = []
    for run in runs:
        k = seen.get(run.run_id, 0)
        seen[run.run_id] = k + 1
        renamed.append(run if k == 0 else _renamed(run, f"{run.run_id}#{k + 1}"))
    try:
        n = write_runs(output, renamed)
    except OSError as e:
        raise fail(f"-o {output}: cannot write: {e.strerror or e}") from None
    kind = "unfinished" if unfinished else "finished"
    out.print(f"wrote {n} {kind} runs from {escape(str(store))} to {escape(str(output))}")


def _renamed(run: AppRun, run_id: str) -> AppRun:
    return replace(run, run_id=run_id)


def read_sources(paths: list[Path]) -> list[AppRun]:
    """The runs of `paths`, each a runs file or a run store (its finished runs)."""
    runs: list[AppRun] = []
    for p in paths:
        if is_sqlite_file(p):
            runs.extend(r.run for r in load_store(p, finished=True))
        else:
            runs.extend(read_all([p]))
    return runs


def store_stats(rows: list[StoredRun]) -> dict[str, Any]:
    """Per application type: runs (finished and not), stages, calls, tokens and tool seconds,
    and when its first and last runs were stored."""
    by_app: dict[str, list[StoredRun]] = defaultdict(list)
    for row in rows:
        by_app[row.run.app].append(row)
    apps = {a: _app_stats(by_app[a]) for a in sorted(by_app)}
    return {
        "runs": sum(1 for r in rows if r.finished),
        "unfinished": sum(1 for r in rows if not r.finished),
        "apps": apps,
    }


def _app_stats(rows: list[StoredRun]) -> dict[str, Any]:
    done = [r.run for r in rows if r.finished]
    stages = [len(r.stages) for r in done]
    llm = [c for r in done for s in r.stages for c in s.llm_calls()]
    tool = [c for r in done for s in r.stages for c in s.tool_calls()]
    n = max(1, len(done))
    names = sorted({s.name for r in done for s in r.stages})
    return {
        "runs": len(done),
        "unfinished": len(rows) - len(done),
        "stage_names": names,
        "stages_per_run": {"mean": sum(stages) / n, "max": max(stages, default=0)},
        "llm_calls": len(llm),
        "tool_calls": len(tool),
        "prompt_tokens": sum(c.prompt_tokens for c in llm),
        "completion_tokens": sum(c.completion_tokens for c in llm),
        "tokens_per_run": sum(c.prompt_tokens + c.completion_tokens for c in llm) / n,
        "tool_seconds": sum(c.duration_s for c in tool),
        "tool_seconds_per_run": sum(c.duration_s for c in tool) / n,
        "first_stored": _iso(min(r.stored_at for r in rows)),
        "last_stored": _iso(max(r.stored_at for r in rows)),
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


@runs_app.command("stats")
def stats(
    store: StoreArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Runs per application type in the store: stages, calls, tokens, tool seconds."""
    summary = {"store": str(store), **store_stats(load_store(store, finished=None))}
    if as_json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = Table(
        title=f"{escape(str(store))}: {summary['runs']} finished runs, "
        f"{summary['unfinished']} unfinished"
    )
    table.add_column("type", no_wrap=True, min_width=max(map(len, summary["apps"]), default=4))
    for col in ("runs", "cut off", "stages/run", "LLM calls", "tool calls", "tokens/run"):
        table.add_column(col, justify="right")
    table.add_column("tool s/run", justify="right")
    for app, s in summary["apps"].items():
        table.add_row(
            escape(app),
            str(s["runs"]),
            str(s["unfinished"]),
            f"{s['stages_per_run']['mean']:.1f}",
            str(s["llm_calls"]),
            str(s["tool_calls"]),
            f"{s['tokens_per_run']:.0f}",
            f"{s['tool_seconds_per_run']:.2f}",
        )
    out.print(table)
    for app, s in summary["apps"].items():
        out.print(f"{escape(app)}: stored from {s['first_stored']} to {s['last_stored']}")
