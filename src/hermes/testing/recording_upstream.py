"""A `BlockingUpstream` that also keeps the request headers of each call it gets, by the
call's first message: what the gateway sends upstream besides the body (tests)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from hermes.testing.blocking_upstream import BlockingUpstream

__all__ = ["RecordingUpstream"]


class RecordingUpstream(BlockingUpstream):
    def __init__(self, model: str = "m", is_open: bool = True) -> None:
        super().__init__(model, is_open)
        self.headers: dict[str, dict[str, str]] = {}  # by first message (or prompt)

    async def _call(self, request: Request) -> Response:
        body = json.loads(await request.body())  # Starlette keeps it for the next read
        msgs = body.get("messages")
        self.headers[str(msgs[0]["content"] if msgs else body.get("prompt"))] = dict(
            request.headers
        )
        return await super()._call(request)
