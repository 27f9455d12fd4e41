"""A fake OpenAI upstream that records the order calls reach it (by their first message) and
holds every call until it is opened: grant orders can then be compared between gateways.
Opened, it answers at once (plain or streamed), which also makes it the zero-work upstream
of latency benchmarks."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["BlockingUpstream"]


class BlockingUpstream:
    def __init__(self, model: str = "m", is_open: bool = False) -> None:
        self.model = model
        self.arrived: list[str] = []  # each call's first message (or prompt), in order
        self._open = threading.Event()
        if is_open:
            self._open.set()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._call, methods=["POST"]),
                Route("/v1/completions", self._call, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    def open(self) -> None:
        """Let every call held, and every later one, through."""
        self._open.set()

    def hold(self) -> None:
        """Hold every call from now on, until `open`."""
        self._open.clear()

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def _call(self, request: Request) -> Response:
        body = json.loads(await request.body())
        msgs = body.get("messages")
        self.arrived.append(str(msgs[0]["content"] if msgs else body.get("prompt")))
        while not self._open.is_set():
            await asyncio.sleep(0.005)
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if body.get("stream"):
            return StreamingResponse(self._events(usage), media_type="text/event-stream")
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}}
        choice["finish_reason"] = "stop"
        return JSONResponse(self._chunk(choice, usage, "chat.completion"))

    def _chunk(
        self, choice: dict[str, object] | None, usage: object, kind: str
    ) -> dict[str, object]:
        return {
            "id": "x",
            "object": kind,
            "created": 0,
            "model": self.model,
            "choices": [] if choice is None else [choice],
            "usage": usage,
        }

    async def _events(self, usage: dict[str, int]) -> AsyncIterator[str]:
        for text in ("o", "k"):
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            yield f"data: {json.dumps(self._chunk(choice, None, 'chat.completion.chunk'))}\n\n"
        yield f"data: {json.dumps(self._chunk(None, usage, 'chat.completion.chunk'))}\n\n"
        yield "data: [DONE]\n\n"
