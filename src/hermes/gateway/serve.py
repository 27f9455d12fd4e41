"""Running the gateway: uvicorn for it, and in the same event loop an emulated engine server
for every backend of kind `emulated` (each on a port of its own, reached over real HTTP, so
the path a call takes is the one it takes in front of vLLM)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

import uvicorn

from hermes.engine.engine_config import EngineConfig
from hermes.gateway.build import build_gateway
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.emulator import EmulatedEngine, emulator_app
from hermes.gateway.server import Gateway
from hermes.profiles import load_profile


class _QuietServer(uvicorn.Server):
    """Leaves signals to the caller: several servers share one loop, and one Ctrl-C must stop
    them in order (the gateway drains first, then the engines behind it)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bound(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def _server(app: object, sock: socket.socket, log_level: str) -> AsyncIterator[None]:
    server = _QuietServer(uvicorn.Config(app, log_level=log_level, lifespan="on"))  # type: ignore[arg-type]
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def _emulate(backend: Backend, stack: AsyncExitStack) -> Backend:
    """Start an emulated engine server for `backend`; the backend with its URL."""
    cost = load_profile(backend.emulate_model, backend.emulate_gpu, None)
    engine = EmulatedEngine(
        cost, EngineConfig(max_num_seqs=backend.emulate_max_num_seqs), time_scale=backend.time_scale
    )
    sock = _bound("127.0.0.1", 0)
    await stack.enter_async_context(
        _server(emulator_app(dict.fromkeys(backend.models, engine)), sock, "warning")
    )
    port = sock.getsockname()[1]
    return backend.model_copy(update={"url": f"http://127.0.0.1:{port}", "health_path": "/health"})


@asynccontextmanager
async def running(
    config: GatewayConfig, log_level: str = "warning"
) -> AsyncIterator[tuple[Gateway, str]]:
    """The gateway and its emulated engines, serving; yields the gateway and its base URL."""
    async with AsyncExitStack() as stack:
        backends = [
            await _emulate(b, stack) if b.kind == "emulated" else b for b in config.backends
        ]
        config = config.model_copy(update={"backends": backends})
        gateway = build_gateway(config)
        sock = _bound(config.host, config.port)
        host, port = sock.getsockname()[:2]
        await stack.enter_async_context(_server(gateway.app, sock, log_level))
        yield gateway, f"http://{host}:{port}"


async def serve_until_stopped(config: GatewayConfig, stop: asyncio.Event) -> None:
    async with running(config, log_level="info"):
        await stop.wait()
