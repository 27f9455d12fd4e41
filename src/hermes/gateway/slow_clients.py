"""Slow clients: bounds on the time a client takes to send its request.

uvicorn closes a kept-alive connection that stays idle (`timeout_keep_alive`), but it has no
bound on a request that arrives slowly: a client that sends its headers a byte at a time (or
sends nothing at all after connecting), or a body that trickles in, holds its connection, and
a handler, for as long as it likes (slowloris). Two bounds close that:

- headers: `with_header_timeout` wraps uvicorn's HTTP protocol: a connection whose request
  headers are not all in within `client_header_timeout_s` (from the connection, or from the
  first byte of a kept-alive connection's next request) is closed. Counted in
  `hermes_slow_clients{phase="headers"}`.
- body: `BodyDeadline`, ASGI middleware on the routes that read one: a body not all in within
  `client_body_timeout_s` of its headers is answered 408 and the connection closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hermes.gateway.errors import error_body


def slow_client_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "hermes_slow_clients",
        "Requests cut off because the client sent them too slowly, by phase (headers, body)",
        ["phase"],
        registry=registry,
    )


def uvicorn_http_protocol() -> type[asyncio.Protocol]:
    """The HTTP protocol uvicorn's "auto" picks: httptools when installed, else h11."""
    try:
        import httptools  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


def with_header_timeout(
    base: type[Any], timeout_s: float, on_timeout: Callable[[], None] = lambda: None
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol `base` (h11 or httptools; both keep the request in progress as
    `cycle`), closing a connection whose next request's headers take over `timeout_s`."""

    class HeaderTimeout(base):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            # The next request on a kept-alive connection is timed from its first byte: an
            # idle connection is uvicorn's to close (timeout_keep_alive), and closing it here
            # could race a client that is just sending its next request.
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._header_timer is None:
                self._arm()
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                timer = self.loop.call_later(timeout_s, self._late, self.cycle)
                self._header_timer = timer

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _late(self, cycle: Any) -> None:
            self._header_timer = None
            # Still the cycle of when the timer started, and none in progress: no request's
            # headers came since (a request in progress has its own bounds).
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is cycle and idle and not self.transport.is_closing():
                on_timeout()
                self.transport.close()

    return HeaderTimeout


class _BodyLateError(Exception):
    pass


class BodyDeadline:
    """Answers 408 (and closes the connection) when a request's body is not all in within
    `timeout_s` of its headers. Innermost on a route, so that it catches its own signal from
    the handler's read before the error table does."""

    def __init__(
        self, app: ASGIApp, timeout_s: float, on_timeout: Callable[[], None] = lambda: None
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        done = False

        async def timed() -> Message:
            nonlocal done
            if done:  # the body is in: later reads wait for a disconnect, as long as it takes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyLateError from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, timed, send)
        except _BodyLateError:
            self.on_timeout()
            message = f"the request body did not arrive within {self.timeout_s:g} s"
            body = error_body(408, "invalid_request_error", message)
            response = JSONResponse(body, status_code=408, headers={"Connection": "close"})
            await response(scope, receive, send)
