"""`hermes serve`: the gateway, in front of real engines or emulated ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hermes.cli import fast
from hermes.cli.common import err, fail, listen_error
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
        float,
        typer.Option(
            min=0.001,
            help="With --emulate: wall seconds per model second (0.1: ten times faster).",
        ),
    ] = 1.0,
    on_ray: Annotated[bool, typer.Option("--ray", help=_RAY_HELP)] = False,
    ray_address: Annotated[str | None, typer.Option(help=_RAY_ADDRESS_HELP)] = None,
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
    from hermes.gateway import logs
    from hermes.gateway.config import emulated_default, load_gateway_config
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
    if on_ray or ray_address is not None:
        return _serve_on_ray(cfg, on_ray, ray_address)
    deployments = [b.name for b in cfg.backends if b.url.startswith("serve://")]
    if deployments:
        names = ", ".join(deployments)
        raise fail(f"backends {names} are Ray Serve deployments (serve://): they need --ray")
    _serve_here(cfg, log_level.lower(), access_log)


def _serve_here(cfg: Any, log_level: str, access_log: bool) -> None:
    """The gateway in this process until SIGINT or SIGTERM, on the fast path where it is."""
    import asyncio
    import signal

    from hermes.gateway.serve import running

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # The banner once the socket is bound and the gateway built (its config checked):
        # the address printed is one that answers (with port 0, the port picked).
        async with running(cfg, log_level, access_log) as (_, url):
            err.print(
                f"hermes gateway on {url} (policy {cfg.policy}; {fast.path()}); Ctrl-C stops",
                highlight=False,
                soft_wrap=True,
            )
            await stop.wait()

    try:
        fast.run(main())
    except OSError as e:
        raise fail(listen_error(e, cfg.host, cfg.port)) from None
    except ValueError as e:
        raise fail(str(e)) from None


_RAY_HELP = "On Ray Serve: ingress replicas and a scheduler actor (docs/ray.md)."
_RAY_ADDRESS_HELP = "With --ray: the Ray cluster to join (default: Ray in-process)."


def _serve_on_ray(cfg: Any, on_ray: bool, address: str | None) -> None:
    """`hermes serve --ray [--ray-address ADDRESS]`."""
    import asyncio
    import importlib.util
    import signal

    if not on_ray:
        raise fail("--ray-address needs --ray")
    if importlib.util.find_spec("ray") is None:
        raise fail("--ray needs Ray Serve: pip install 'hermes-sched[ray]'")
    if address is not None:
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": address})})
    from hermes.ray_serve.launch import serve_on_ray

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)

        def ready(url: str) -> None:
            err.print(f"hermes gateway on Ray Serve at {url} (policy {cfg.policy}); Ctrl-C stops")

        await serve_on_ray(cfg, stop, ready)

    try:
        asyncio.run(main())
    except (OSError, ValueError) as e:
        raise fail(str(e)) from None
