"""Running the gateway: uvicorn for it, and in the same event loop an emulated engine server
for every backend of kind `emulated` (each on a port of its own, reached over real HTTP, so
the path a call takes is the one it takes in front of vLLM)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

import uvicorn

from hermes.emulator.server import emulated_app
from hermes.gateway.build import build_gateway
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.logs import AccessLog
from hermes.gateway.server import Gateway
from hermes.gateway.slow_clients import uvicorn_http_protocol, with_header_timeout


class _QuietServer(uvicorn.Server):
    """Leaves signals to the caller: several servers share one loop, and one Ctrl-C must stop
    them in order (the gateway drains first, then the engines behind it)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bound(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # whose proto says TCP, and accepted sockets inherit it. Without it a response written in
    # two parts (headers, then body) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:  # a busy port: the error is the caller's to report, the socket ours
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def _server(
    app: object,
    sock: socket.socket,
    log_level: str,
    access_log: bool = False,
    http: type[asyncio.Protocol] | str = "auto",
) -> AsyncIterator[None]:
    # uvicorn's own access log stays off: the gateway's is structured (`logs.AccessLog`).
    # A shutdown waits at most 5 s for connections still busy (the gateway drained before).
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level=log_level,
        lifespan="on",
        access_log=access_log,
        http=http,
        timeout_graceful_shutdown=5,
    )
    server = _QuietServer(config)
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


async def _emulate(backend: Backend, stack: AsyncExitStack, adapters: set[str]) -> Backend:
    """Start an emulated engine server for `backend`; the backend with its URL. Its models
    named in `adapters` are LoRA adapters, served once loaded at run time."""
    app = emulated_app(
        backend.models,
        profile=backend.emulate_model,
        gpu=backend.emulate_gpu,
        max_num_seqs=backend.emulate_max_num_seqs,
        time_scale=backend.time_scale,
        adapters=adapters,
    )
    sock = _bound("127.0.0.1", 0)
    await stack.enter_async_context(_server(app, sock, "warning"))
    port = sock.getsockname()[1]
    return backend.model_copy(update={"url": f"http://127.0.0.1:{port}", "health_path": "/health"})


@asynccontextmanager
async def running(
    config: GatewayConfig, log_level: str = "warning", access_log: bool = False
) -> AsyncIterator[tuple[Gateway, str]]:
    """The gateway and its emulated engines, serving; yields the gateway and its base URL.
    `access_log`: a JSON line per HTTP call on logger `hermes.access` (`logs`)."""
    adapters: dict[str, set[str]] = {}
    for t in config.prewarm_targets:
        if t.action == "vllm-load-lora" and t.upstream is not None:
            adapters.setdefault(t.upstream, set()).add(t.name)
    async with AsyncExitStack() as stack:
        backends = [
            await _emulate(b, stack, adapters.get(b.name, set())) if b.kind == "emulated" else b
            for b in config.backends
        ]
        config = config.model_copy(update={"backends": backends})
        gateway = build_gateway(config)
        sock = _bound(config.host, config.port)
        host, port = sock.getsockname()[:2]
        slow = gateway.slow_clients.labels("headers").inc
        http = with_header_timeout(uvicorn_http_protocol(), config.client_header_timeout_s, slow)
        app = AccessLog(gateway.app, gateway.clock) if access_log else gateway.app
        await stack.enter_async_context(_server(app, sock, log_level, False, http))
        # Unwound first: new calls get 503 while those in flight finish, and only then does
        # uvicorn stop listening (it would refuse connections, and drain nothing the gateway
        # has queued).
        stack.push_async_callback(gateway.drain)
        yield gateway, f"http://{host}:{port}"


async def serve_until_stopped(
    config: GatewayConfig, stop: asyncio.Event, log_level: str = "info", access_log: bool = False
) -> None:
    async with running(config, log_level, access_log):
        await stop.wait()
