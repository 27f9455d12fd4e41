"""The ``hermes`` command line: one typer app, its commands in the modules beside this one."""

from __future__ import annotations

import typer

from hermes.cli.apps import demo, generate, inspect, learn_cmd
from hermes.cli.bench import bench_bros, bench_hermes, bench_qlm
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
app.command()(generate)
app.command("learn")(learn_cmd)
app.command()(inspect)
app.command()(demo)
app.command()(sim)
app.command()(serve)
app.command()(emulate)
app.command()(replay)

bench = typer.Typer(
    help="Reproduce the papers' experiments on the simulator.", no_args_is_help=True
)
bench.command("hermes")(bench_hermes)
bench.command("bros")(bench_bros)
bench.command("qlm")(bench_qlm)
app.add_typer(bench, name="bench")
app.add_typer(runs_app, name="runs")


def main() -> None:  # pragma: no cover - console entry point
    app()
