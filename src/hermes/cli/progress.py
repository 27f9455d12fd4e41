"""Progress of the long commands on the terminal: rich progress bars fed by the benches'
progress callbacks (one message per simulation step) and the simulator's (the share of
simulated time done).

Drawn on stderr, so that stdout keeps only the results; nothing at all when stderr is not a
terminal (a pipe, a CI log: a redrawn bar there is noise) or with `--quiet`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from hermes.cli.common import err
from hermes.types import ProgressLog

Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bar (there is none either when stderr is not a terminal).",
    ),
]


def shown(quiet: bool) -> bool:
    """Whether a bar is drawn: not asked to be quiet, and stderr is a terminal."""
    return not quiet and err.is_terminal


def _quiet_step(_: str) -> None:
    return None


@contextmanager
def steps(label: str, quiet: bool = False) -> Iterator[ProgressLog]:
    """A callback for a bench's progress messages: each one counts a step and names it under
    a pulsing bar with the elapsed time (a bench does not say ahead how many steps it has)."""
    if not shown(quiet):
        yield _quiet_step
        return
    columns = (
        SpinnerColumn(),
        TextColumn(f"{escape(label)} · step {{task.completed:.0f}}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def step(message: str) -> None:
            bar.update(task, advance=1, description=escape(message))

        yield step


@contextmanager
def fraction(label: str, quiet: bool = False) -> Iterator[Callable[[float], None] | None]:
    """A callback for the share of the work done (0 to 1), or None when nothing is shown:
    the caller then skips the per-event bookkeeping."""
    if not shown(quiet):
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn(escape(label)),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=1.0)
        yield lambda done: bar.update(task, completed=done)
