"""Generation answers shaped as vLLM shapes them: one JSON body, or server-sent events that
abort the engine request when the client goes away."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hermes.emulator.engine import EmulatedRequest, EmulatorError, GenerationRecord
from hermes.emulator.parsing import Call
from hermes.emulator.tokens import filler_token


async def cancel_on_disconnect(receive: Receive, handle: EmulatedRequest) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    handle.engine.cancel(handle)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Shape:
    """Response bodies shaped as vLLM shapes them."""

    def __init__(self, call: Call, chat: bool, response_id: str) -> None:
        self.call = call
        self.chat = chat
        self.id = response_id
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.call.model}

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        p = self.call.prompt_tokens
        return {
            "prompt_tokens": p,
            "total_tokens": p + completion_tokens,
            "completion_tokens": completion_tokens,
        }

    def whole(self, tokens: list[int], record: GenerationRecord) -> dict[str, Any]:
        text = "".join(map(filler_token, tokens))
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice |= {"logprobs": None, "finish_reason": record.finish_reason, "stop_reason": None}
        body = self._head("chat.completion" if self.chat else "text_completion")
        body |= {"choices": [choice], "usage": self._usage(record.completion_tokens)}
        return body

    async def events(self, handle: EmulatedRequest) -> AsyncIterator[bytes]:
        last = self.call.max_tokens - 1
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        include_usage = self.call.include_usage
        try:
            async for index in handle:
                choice: dict[str, Any] = {"index": 0}
                if self.chat:
                    delta = {"role": "assistant"} if index == 0 else {}
                    choice["delta"] = delta | {"content": filler_token(index)}
                else:
                    choice["text"] = filler_token(index)
                finish = "length" if index == last else None
                choice |= {"logprobs": None, "finish_reason": finish, "stop_reason": None}
                chunk = self._head(obj) | {"choices": [choice]}
                if include_usage:
                    chunk["usage"] = None
                yield b"data: " + _dumps(chunk) + b"\n\n"
        except EmulatorError as exc:
            error = {"message": str(exc), "type": "InternalServerError", "param": None, "code": 500}
            yield b"data: " + _dumps({"error": error}) + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        record = handle.record
        if record is None or record.finish_reason == "abort":
            return  # the client went away
        if include_usage:
            chunk = self._head(obj) | {
                "choices": [],
                "usage": self._usage(record.completion_tokens),
            }
            yield b"data: " + _dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"


class EventStream(Response):
    """Server-sent events that abort the engine request when the client disconnects.

    A watcher reads `receive` for `http.disconnect` while the events flow, so a request still
    queued (sending nothing yet) is aborted too; a failed send ends the stream the same way.
    """

    media_type = "text/event-stream"

    def __init__(self, handle: EmulatedRequest, events: AsyncIterator[bytes]) -> None:
        self.handle = handle
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handle = self.handle
        watcher = asyncio.create_task(cancel_on_disconnect(receive, handle))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-send (ASGI 2.4 servers raise, older ones ignore)
        finally:
            watcher.cancel()
            handle.engine.cancel(handle)
            aclose: Callable[[], Awaitable[None]] | None = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            await asyncio.gather(watcher, return_exceptions=True)
