"""`hermes serve --ray`: emulated backends started here (on `config.host`, each on a port of
its own), the gateway deployed on Ray Serve, served until `stop` is set, then taken down (and
a Ray this process started, shut down)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

import uvicorn

from hermes.emulator.server import emulated_app
from hermes.gateway.config import GatewayConfig


@contextlib.asynccontextmanager
async def emulated_backends(config: GatewayConfig) -> AsyncIterator[GatewayConfig]:
    """`config` with each `emulated` backend served from this event loop, by URL."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    backends = []
    try:
        for b in config.backends:
            if b.kind != "emulated" or b.url:
                backends.append(b)
                continue
            app = emulated_app(
                b.models,
                profile=b.emulate_model,
                gpu=b.emulate_gpu,
                max_num_seqs=b.emulate_max_num_seqs,
                time_scale=b.time_scale,
            )
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.bind((config.host, 0))
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
            servers.append((server, asyncio.ensure_future(server.serve(sockets=[sock]))))
            while not server.started:
                await asyncio.sleep(0.01)
            url = f"http://{config.host}:{sock.getsockname()[1]}"
            backends.append(b.model_copy(update={"url": url, "health_path": "/health"}))
        yield config.model_copy(update={"backends": backends})
    finally:
        for server, task in servers:
            server.should_exit = True
            await task


async def serve_on_ray(
    config: GatewayConfig, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """Serve `config` on Ray until `stop` is set; `on_ready(urls)` once it serves."""
    import ray

    from hermes.ray_serve.deployment import deploy, undeploy

    started_ray = not ray.is_initialized()
    try:
        async with emulated_backends(config) as cfg:
            gateway = await asyncio.to_thread(deploy, cfg)
            # Under direct ingress, each replica's own URL after the proxy's.
            on_ready(", ".join((gateway.url, *gateway.replica_urls)))
            try:
                await stop.wait()
            finally:
                await asyncio.to_thread(undeploy, gateway)
    finally:
        if started_ray and ray.is_initialized():
            from ray import serve

            await asyncio.to_thread(serve.shutdown)
            ray.shutdown()
