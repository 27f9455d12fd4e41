"""`hermes replay`: recorded runs driven through a live gateway as their applications would."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hermes.cli.common import err, fail, out, print_recorded, read_all, write_json


def replay(
    run_files: Annotated[
        list[Path],
        typer.Argument(metavar="RUNS...", help="Run files, or folders of them (every *.jsonl)."),
    ],
    target: Annotated[
        str,
        typer.Option(
            help="The gateway's base URL, e.g. http://host:8080 (a trailing /v1 is fine)."
        ),
    ],
    rate: Annotated[float, typer.Option(help="Applications per second.")],
    apps: Annotated[
        int | None,
        typer.Option(min=1, help="Applications drawn with replacement. (default: each run once)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (draws and arrivals).")] = 0,
    model: Annotated[
        str | None,
        typer.Option(help="Model for every call. (default: the stage's, else the gateway's first)"),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="The gateway's API key.")] = None,
    admin_key: Annotated[
        str | None, typer.Option(help="Key for the app events. (default: the API key)")
    ] = None,
    time_scale: Annotated[
        float,
        typer.Option(
            help="Wall seconds per recorded second for tool stages and deadlines (0.1: ten "
            "times shorter; match the emulator's --time-scale)."
        ),
    ] = 1.0,
    timeout: Annotated[float, typer.Option(help="Per request, s.")] = 600.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """Drive recorded runs through a gateway as their applications would (Poisson arrivals,
    stages in order, an LLM stage's calls in parallel) and report completion times."""
    import asyncio

    from hermes.replay import ReplayError, ReplaySettings
    from hermes.replay import replay as run_replay

    runs = read_all(run_files)
    try:
        settings = ReplaySettings(
            target, rate, apps, seed, model, api_key, admin_key, time_scale, timeout_s=timeout
        )
        with err.status(f"replaying through {escape(target)}"):
            result = asyncio.run(run_replay(runs, settings))
    except ReplayError as e:
        raise fail(str(e)) from None
    result["config"]["files"] = [str(p) for p in run_files]
    print_recorded({"policies": {"replay": result}})
    if result["errors"]:
        errors = ", ".join(f"{k}: {v}" for k, v in result["errors"].items())
        out.print(f"errors by status: {escape(errors)}")
    if json_out is not None:
        write_json(json_out, result)
    if result["failed"]:
        err.print(f"[bold red]{result['failed']} of {result['apps']} applications failed[/]")
        raise typer.Exit(1)
