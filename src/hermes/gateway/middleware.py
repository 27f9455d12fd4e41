"""HTTP concerns kept out of the handlers, as ASGI middleware on the routes that need them: a
gateway that drains refuses new calls, bearer tokens are checked (and the caller's tenant kept
for the handler), and bodies are held to a size. Each raises the gateway's errors, which its
one table answers (`errors`)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hermes.gateway.errors import (
    AuthenticationError,
    BadRequestError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from hermes.gateway.tenants import Keyring, Route, authorization, set_caller


class Draining:
    """Refuses new calls with 503 while `draining()` says the gateway is shutting down."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.draining():
            raise ServiceUnavailableError("the gateway is shutting down")
        await self.app(scope, receive, send)


class BearerAuth:
    """Requires `Authorization: Bearer <key>` with a key that `keys` takes on `route`, and
    keeps the caller it names for the handler (`tenants.caller_of`)."""

    def __init__(self, app: ASGIApp, keys: Keyring, route: Route) -> None:
        self.app = app
        self.keys = keys
        self.route: Route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = self.keys.caller(self.route, authorization(scope))
        if tenant is None:
            raise AuthenticationError("missing or wrong bearer token")
        set_caller(scope, tenant)
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses a body over `limit` bytes with 413: by its Content-Length before any of it is
    read, else as it streams in; a malformed Content-Length with 400."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequestError(f"bad Content-Length header {declared[:20]!r}")
            if int(declared) > limit:
                raise PayloadTooLargeError(f"the body is {declared} bytes; the limit is {limit}")
        size = 0

        async def limited() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise PayloadTooLargeError(f"the body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)
