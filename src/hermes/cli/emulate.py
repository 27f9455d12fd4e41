"""`hermes emulate`: one emulated engine as a server process of its own."""

from __future__ import annotations

from typing import Annotated

import typer

from hermes.cli.common import err, fail


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
        str, typer.Option(help="Engine profile that times it (e.g. llama-2-7b, llama-3-8b).")
    ] = "llama-2-7b",
    gpu: Annotated[str, typer.Option(help="GPU of the profile.")] = "a100",
    max_num_seqs: Annotated[int, typer.Option(min=1, help="Requests in a batch at most.")] = 256,
) -> None:
    """An emulated inference engine (the simulator's engine model in real time behind a
    vLLM-style API, no GPU) as its own server: an upstream that can be killed, stalled
    (SIGSTOP) and restarted like a real one. Ctrl-C or SIGTERM stops it."""
    import asyncio

    from hermes.emulator.server import emulated_app, listening_socket, serve

    try:
        app = emulated_app(
            model, profile=profile, gpu=gpu, max_num_seqs=max_num_seqs, time_scale=time_scale
        )
        sock = listening_socket(host, port)
    except (OSError, ValueError) as e:
        raise fail(f"emulate: {e}") from None
    bound = sock.getsockname()[1]
    err.print(
        f"hermes emulated engine on http://{host}:{bound} serving {', '.join(model)} "
        f"({profile} on {gpu}, time scale {time_scale:g}); Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    asyncio.run(serve(app, sock))
