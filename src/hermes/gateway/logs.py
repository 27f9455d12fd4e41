"""The gateway's logs: its own lines (logger `hermes`, plain text, `--log-level`) and an
optional structured access log (logger `hermes.access`, `--access-log`): one JSON object a
line per HTTP call, with method, path, status, duration, application id and upstream.

What is logged where: upstreams leaving and rejoining rotation (`health`), replicas put to
sleep or woken (`prewarm`), calls retried on another upstream (`calls`), every refused or
failed call with its status and message (`errors`), an upstream's 4xx passed on
(`forwarding`), a stream that fails after its 200 (`relay`), run-store write failures and
recoveries (`outbox`), finished applications (`finishing`). The access log is off by
default: a line per call costs the event loop time and floods a terminal at thousands of
calls per second, and /metrics counts calls.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO, get_args

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hermes.types import Clock

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
ACCESS = "hermes.access"
UPSTREAM = "hermes_upstream"  # where a handler leaves the upstream a call was sent to
_MAX_FIELD = 256  # client-chosen fields (app id, path) are cut to this many characters


def check_level(level: str) -> int:
    """The `logging` level of `level` (one of LOG_LEVELS); ValueError naming the choices."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    return int(getattr(logging, level.upper()))


def configure(level: str = "info", access_log: bool = False, stream: TextIO | None = None) -> None:
    """Send the gateway's lines at `level` and up to `stream` (stderr), and the access log's
    JSON lines when `access_log`; idempotent (handlers are replaced, not added)."""
    stream = stream or sys.stderr
    own = logging.getLogger("hermes")
    own.setLevel(check_level(level))
    text = logging.StreamHandler(stream)
    text.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _replace(own, text)
    access = logging.getLogger(ACCESS)
    access.propagate = False  # its lines are JSON only, not prefixed like the others
    access.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    plain = logging.StreamHandler(stream)
    plain.setFormatter(logging.Formatter("%(message)s"))
    _replace(access, plain)


def _replace(logger: logging.Logger, handler: logging.Handler) -> None:
    for h in [h for h in logger.handlers if getattr(h, "_hermes", False)]:
        logger.removeHandler(h)
    handler._hermes = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def set_upstream(scope: Scope, upstream: str) -> None:
    """For the access log: the upstream the call in `scope` was sent to."""
    scope.setdefault("state", {})[UPSTREAM] = upstream


def _cut(value: str | None) -> str | None:
    return None if value is None else value[:_MAX_FIELD]


class AccessLog:
    """ASGI middleware: one JSON line per HTTP call on logger `hermes.access`, written when
    the call ends (a stream's at its last byte)."""

    def __init__(self, app: ASGIApp, clock: Clock = time.monotonic) -> None:
        self.app = app
        self.clock = clock
        self.log = logging.getLogger(ACCESS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock()
        status = 0

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            self.log.info("%s", self.line(scope, status or 500, self.clock() - start))

    @staticmethod
    def line(scope: Scope, status: int, duration_s: float) -> str:
        headers = Headers(scope=scope)
        state = scope.get("state") or {}
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "method": scope.get("method"),
            "path": _cut(scope.get("path")),
            "status": status,
            "duration_ms": round(duration_s * 1e3, 2),
            "app_id": _cut(headers.get("x-hermes-app-id")),
            "upstream": state.get(UPSTREAM),
            "client": (scope.get("client") or [None])[0],
        }
        return json.dumps(entry, separators=(",", ":"))
