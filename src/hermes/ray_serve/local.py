"""The Ray gateway's parts in one process and one event loop: a scheduler core and ingress
replicas that reach it by plain calls. For tests of the protocol without Ray, and as the
benchmark's measure of what the actor hop itself costs."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence

from starlette.types import Receive, Scope, Send

from hermes.gateway.config import GatewayConfig
from hermes.ray_serve.ingress import Ingress
from hermes.ray_serve.protocol import HttpAnswer, HttpCall, Op, Reply
from hermes.ray_serve.scheduler import SchedulerCore
from hermes.ray_serve.serve_upstream import HandleFor


class LocalRemote:
    """`SchedulerRemote` for a core on the same event loop."""

    def __init__(self, core: SchedulerCore) -> None:
        self.core = core

    async def step(self, replica: str, ops: Sequence[Op]) -> Reply:
        return await self.core.step(replica, ops)

    async def poll(self, replica: str, wait_s: float) -> Reply:
        return await self.core.poll(replica, wait_s)

    async def http(self, request: HttpCall) -> HttpAnswer:
        return await self.core.http(request)


class LocalRayGateway:
    """An ASGI app: `replicas` ingress replicas taking calls in turn, one scheduler core."""

    def __init__(
        self, config: GatewayConfig, replicas: int = 2, serve_handles: HandleFor | None = None
    ) -> None:
        """`serve_handles`: for backends that are Serve deployments (tests pass stand-ins)."""
        self.core = SchedulerCore.from_config(config)
        remote = LocalRemote(self.core)
        self.ingresses = [
            Ingress(config, remote, f"local-{i}", serve_handles=serve_handles)
            for i in range(replicas)
        ]
        self._turn = itertools.cycle(self.ingresses)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await next(self._turn).app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        await self.core.start()
        try:
            for i in self.ingresses:
                await i.start()
            yield
        finally:
            for i in self.ingresses:
                await i.close()
            await self.core.stop()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with contextlib.AsyncExitStack() as stack:
            message = await receive()
            assert message["type"] == "lifespan.startup"
            try:
                await stack.enter_async_context(self.running())
            except Exception as e:
                await send({"type": "lifespan.startup.failed", "message": str(e)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
