"""`hermes serve`: the gateway, in front of real engines or emulated ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hermes.cli.common import err, fail
from hermes.gateway.logs import LOG_LEVELS


def serve(
    config: Annotated[Path | None, typer.Option("--config", help="Gateway config (YAML).")] = None,
    emulate: Annotated[
        bool, typer.Option("--emulate", help="Serve emulated engines: no GPU, no other server.")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Listen port (0: any free one).")
    ] = None,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="With --emulate: model time per wall second.")
    ] = 1.0,
    log_level: Annotated[
        str, typer.Option(help=f"The gateway's log level: {', '.join(LOG_LEVELS)}.")
    ] = "info",
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log",
            help="A JSON line per HTTP call on stderr: method, path, status, duration, app id, "
            "upstream (docs/operating.md).",
        ),
    ] = False,
) -> None:
    """The gateway: an OpenAI-compatible endpoint that schedules applications' calls in front
    of inference engines. --emulate runs one emulated Llama-2-7B A100 engine in-process."""
    import asyncio
    import signal

    from hermes.gateway import logs
    from hermes.gateway.config import emulated_default, load_gateway_config
    from hermes.gateway.serve import serve_until_stopped
    from hermes.sim.config import ConfigError

    if (config is None) == (not emulate):
        raise fail("give --config FILE or --emulate (not both)")
    try:
        logs.configure(log_level, access_log)
    except ValueError as e:
        raise fail(f"--log-level: {e}") from None
    try:
        cfg = (
            load_gateway_config(config)
            if config is not None
            else emulated_default(time_scale=time_scale)
        )
    except ConfigError as e:
        raise fail(str(e)) from None
    update: dict[str, Any] = {}
    if host is not None:
        update["host"] = host
    if port is not None:
        update["port"] = port
    cfg = cfg.model_copy(update=update)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print(
            f"hermes gateway on http://{cfg.host}:{cfg.port} (policy {cfg.policy}); Ctrl-C stops"
        )
        await serve_until_stopped(cfg, stop, log_level.lower(), access_log)

    try:
        _run_fast(main())
    except (OSError, ValueError) as e:
        raise fail(str(e)) from None


def _run_fast(coro: Any) -> None:
    """Run `coro` on uvloop when it is installed (`pip install 'hermes[fast]'`), else on
    asyncio's own loop."""
    import asyncio

    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
