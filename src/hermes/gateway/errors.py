"""The gateway's errors. Handlers and middleware raise them; one table (`ERRORS`) gives each
its HTTP status and OpenAI error type, and `exception_handlers` answers every error, Starlette's
own 404 and 405 and an unexpected exception's 500 included, with OpenAI's body:
`{"error": {"message", "type", "param", "code"}}` (`code`: the HTTP status)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hermes.gateway.apps import AppTooLongError, TooManyAppsError
from hermes.gateway.context import HeaderError
from hermes.gateway.tenants import KeyLimitError

log = logging.getLogger("hermes.gateway")


class ApiError(Exception):
    """An error the gateway answers; its class says which status (`ERRORS`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequestError(ApiError):
    """Malformed JSON, a wrong type, a bad header."""


class AuthenticationError(ApiError):
    """A missing or wrong bearer token."""


class NotFoundError(ApiError):
    """A model or application the gateway does not know."""


class ConflictError(ApiError):
    """A request at odds with the application's state."""


class PayloadTooLargeError(ApiError):
    """A body over `max_body_bytes`."""


class RateLimitError(ApiError):
    """The queue is full."""


class ServiceUnavailableError(ApiError):
    """Draining, or a model that could not be swapped in."""


class StoreBehindError(ServiceUnavailableError):
    """A finish the run store's outbox has no room for; the application stays."""


class UpstreamError(ApiError):
    """The upstream failed before it answered, or answered 5xx."""


class UpstreamTimeoutError(ApiError):
    """The upstream took longer than `upstream_timeout_s`."""


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    type: str
    headers: Mapping[str, str] = field(default_factory=dict)


ERRORS: Mapping[type[Exception], ErrorKind] = {
    BadRequestError: ErrorKind(400, "invalid_request_error"),
    HeaderError: ErrorKind(400, "invalid_request_error"),
    AuthenticationError: ErrorKind(401, "authentication_error"),
    KeyLimitError: ErrorKind(403, "permission_error"),
    NotFoundError: ErrorKind(404, "not_found_error"),
    ConflictError: ErrorKind(409, "invalid_request_error"),
    AppTooLongError: ErrorKind(409, "invalid_request_error"),
    PayloadTooLargeError: ErrorKind(413, "invalid_request_error"),
    RateLimitError: ErrorKind(429, "rate_limit_error", {"Retry-After": "1"}),
    TooManyAppsError: ErrorKind(429, "rate_limit_error", {"Retry-After": "1"}),
    ServiceUnavailableError: ErrorKind(503, "unavailable", {"Retry-After": "1"}),
    StoreBehindError: ErrorKind(503, "unavailable", {"Retry-After": "1"}),
    UpstreamError: ErrorKind(502, "upstream_error"),
    UpstreamTimeoutError: ErrorKind(504, "upstream_timeout"),
}
_INTERNAL = ErrorKind(500, "server_error")
# Starlette's own: an unknown path, a method a route does not take.
_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error"}


def kind_of(exc: Exception) -> ErrorKind:
    """`exc`'s row of the table (the nearest class that has one), or 500's."""
    for cls in type(exc).__mro__:
        kind = ERRORS.get(cls)
        if kind is not None:
            return kind
    return _INTERNAL


def error_body(status: int, kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


# Errors raised outside the HTTP layer (the tracker's bounds, a key's limits, a bad header)
# that the table answers as it answers the gateway's own.
DOMAIN_ERRORS = (HeaderError, KeyLimitError, TooManyAppsError, AppTooLongError)


def error_response(exc: Exception) -> JSONResponse:
    kind = kind_of(exc)
    param = exc.param if isinstance(exc, ApiError) else None
    body = error_body(kind.status, kind.type, str(exc), param)
    return JSONResponse(body, status_code=kind.status, headers=dict(kind.headers) or None)


def sse_error(exc: ApiError) -> bytes:
    """`exc` as a server-sent event, for a stream whose 200 has gone out."""
    kind = kind_of(exc)
    body = error_body(kind.status, kind.type, exc.message, exc.param)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def exception_handlers(
    on_refused: Callable[[Request, int], None],
) -> dict[Any, Callable[..., Any]]:
    """Starlette's `exception_handlers`: every error answered in OpenAI's shape;
    `on_refused(request, status)` hears of each the gateway's own errors refuse."""

    async def api_error(request: Request, exc: Exception) -> Response:
        response = error_response(exc)
        on_refused(request, response.status_code)
        # Every refusal and failure answered, one line each (`--log-level warning`: 5xx only).
        status = response.status_code
        log.log(
            logging.WARNING if status >= 500 else logging.INFO,
            "%s %s -> %d: %s",
            request.method,
            request.url.path[:256],
            status,
            str(exc)[:500],
        )
        return response

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        kind = _HTTP_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return JSONResponse(error_body(status, kind, message), status, headers=exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette logs the exception and re-raises it to the server after this answer.
        body = error_body(500, _INTERNAL.type, "internal error; the gateway's log has details")
        return JSONResponse(body, status_code=500)

    return {
        ApiError: api_error,
        **dict.fromkeys(DOMAIN_ERRORS, api_error),
        HTTPException: http_error,
        Exception: internal_error,
    }
