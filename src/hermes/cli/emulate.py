"""`hermes emulate`: one emulated engine as a server process of its own."""

from __future__ import annotations

import asyncio
import socket
from typing import Annotated, Any

import typer

from hermes.cli import fast
from hermes.cli.common import err, fail, listen_error


def emulate(
    model: Annotated[
        list[str],
        typer.Option("--model", help="A model name to serve (repeat for several)."),
    ],
    port: Annotated[int, typer.Option(help="Listen port.", min=0, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    time_scale: Annotated[
        float,
        typer.Option(min=0.001, help="Wall seconds per model second (0.1: ten times faster)."),
    ] = 1.0,
    profile: Annotated[
        str, typer.Option(help="Model whose engine profile times it: {models}.")
    ] = "llama-2-7b",
    gpu: Annotated[str, typer.Option(help="GPU of the profile: {gpus}.")] = "a100",
    max_num_seqs: Annotated[int, typer.Option(min=1, help="Requests in a batch at most.")] = 256,
) -> None:
    """An emulated inference engine (the simulator's engine model in real time behind a
    vLLM-style API, no GPU) as its own server: an upstream that can be killed, stalled
    (SIGSTOP) and restarted like a real one. Ctrl-C or SIGTERM stops it."""
    from hermes.emulator.server import emulated_app, listening_socket

    try:
        app = emulated_app(
            model, profile=profile, gpu=gpu, max_num_seqs=max_num_seqs, time_scale=time_scale
        )
    except ValueError as e:
        raise fail(f"emulate: {e}") from None
    try:
        sock = listening_socket(host, port)
    except OSError as e:
        raise fail(f"emulate: {listen_error(e, host, port)}") from None
    url = f"http://{'[' + host + ']' if ':' in host else host}:{sock.getsockname()[1]}"
    banner = (
        f"hermes emulated engine on {url} serving {', '.join(model)} ({profile} on {gpu}, "
        f"time scale {time_scale:g}; {fast.path()}); Ctrl-C stops"
    )
    fast.run(_serve(app, sock, banner))


async def _serve(app: Any, sock: socket.socket, banner: str) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM (uvicorn's own handlers), printing
    `banner` once uvicorn has started (its lifespan ran): not before it can answer."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        err.print(banner, highlight=False, soft_wrap=True)
    await task
