"""The ``hermes`` command line: one typer app, its commands in the modules beside this one."""

from __future__ import annotations

from typing import Annotated

import typer

from hermes.cli.apps import demo, generate, inspect, learn_cmd
from hermes.cli.bench import bench_bros, bench_hermes, bench_qlm
from hermes.cli.choices import ChoicesCommand
from hermes.cli.emulate import emulate
from hermes.cli.replay import replay
from hermes.cli.runs import runs_app
from hermes.cli.serve import serve
from hermes.cli.sim import sim

__all__ = ["app", "main"]

app = typer.Typer(
    help="Hermes: application-aware scheduling for LLM serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("hermes-sched")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from hermes import __version__ as found
        typer.echo(f"hermes {found}")
        raise typer.Exit()


@app.callback()
def _root(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Hermes: application-aware scheduling for LLM serving."""


# Every command may name its valid choices in its help as {policies}, {models}, ...
for name, command in (
    ("generate", generate),
    ("learn", learn_cmd),
    ("inspect", inspect),
    ("demo", demo),
    ("sim", sim),
    ("serve", serve),
    ("emulate", emulate),
    ("replay", replay),
):
    app.command(name, cls=ChoicesCommand)(command)

bench = typer.Typer(
    help="Reproduce the papers' experiments on the simulator.", no_args_is_help=True
)
bench.command("hermes", cls=ChoicesCommand)(bench_hermes)
bench.command("bros", cls=ChoicesCommand)(bench_bros)
bench.command("qlm", cls=ChoicesCommand)(bench_qlm)
app.add_typer(bench, name="bench")
app.add_typer(runs_app, name="runs")


def main() -> None:  # pragma: no cover - console entry point
    app()
