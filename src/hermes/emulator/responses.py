"""Generation answers shaped as vLLM shapes them: one JSON body, or server-sent events that
abort the engine requests when the client goes away. A request of `n` choices runs `n` engine
requests; the text each writes is its `output.Plan`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hermes.emulator.engine import EmulatedRequest, EmulatorError, GenerationRecord
from hermes.emulator.logprobs import chat_logprobs, completion_logprobs
from hermes.emulator.output import Plan
from hermes.emulator.parsing import Call


async def cancel_on_disconnect(receive: Receive, handles: Sequence[EmulatedRequest]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    for handle in handles:
        handle.engine.cancel(handle)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def merged(handles: Sequence[EmulatedRequest]) -> AsyncIterator[tuple[int, int]]:
    """`(choice, token index)` as the tokens of the choices' requests come."""
    if len(handles) == 1:
        async for index in handles[0]:
            yield 0, index
        return
    queue: asyncio.Queue[tuple[int, int | None, EmulatorError | None]] = asyncio.Queue()

    async def pump(choice: int, handle: EmulatedRequest) -> None:
        try:
            async for index in handle:
                queue.put_nowait((choice, index, None))
            queue.put_nowait((choice, None, None))
        except EmulatorError as exc:
            queue.put_nowait((choice, None, exc))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        live = len(tasks)
        while live:
            choice, token, error = await queue.get()
            if error is not None:
                raise error
            if token is None:
                live -= 1
            else:
                yield choice, token
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Shape:
    """Response bodies shaped as vLLM shapes them, for the choices `plans` spell."""

    def __init__(self, call: Call, chat: bool, response_id: str, plans: Sequence[Plan]) -> None:
        self.call = call
        self.chat = chat
        self.id = response_id
        self.plans = list(plans)
        self.created = int(time.time())
        self.tool_ids = [f"chatcmpl-tool-{uuid.uuid4().hex}" for _ in self.plans]

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.call.model}

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        p = self.call.prompt_tokens
        return {
            "prompt_tokens": p,
            "total_tokens": p + completion_tokens,
            "completion_tokens": completion_tokens,
        }

    def _logprobs(self, pieces: list[str], offset: int = 0) -> dict[str, Any] | None:
        k = self.call.options.logprobs
        if k is None:
            return None
        return chat_logprobs(pieces, k) if self.chat else completion_logprobs(pieces, k, offset)

    def _tool_call(self, choice: int, arguments: str, first: bool) -> dict[str, Any]:
        plan = self.plans[choice]
        if not first:
            return {"index": 0, "function": {"arguments": arguments}}
        fn = {"name": plan.tool, "arguments": arguments}
        return {"index": 0, "id": self.tool_ids[choice], "type": "function", "function": fn}

    def _choice(self, choice: int) -> dict[str, Any]:
        plan = self.plans[choice]
        out: dict[str, Any] = {"index": choice}
        if not self.chat:
            out["text"] = (self.call.options.echo or "") + plan.text
        elif plan.tool is not None:
            call = self._tool_call(choice, plan.text, first=True)
            del call["index"]
            out["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            out["message"] = {"role": "assistant", "content": plan.text, "tool_calls": []}
        out["logprobs"] = self._logprobs(list(plan.pieces))
        return out | {"finish_reason": plan.finish_reason, "stop_reason": plan.stop_reason}

    def whole(self, records: Sequence[GenerationRecord]) -> dict[str, Any]:
        body = self._head("chat.completion" if self.chat else "text_completion")
        choices = [self._choice(i) for i in range(len(self.plans))]
        used = sum(r.completion_tokens for r in records)
        return body | {"choices": choices, "usage": self._usage(used)}

    def _chunk_choice(self, choice: int, index: int) -> dict[str, Any]:
        plan = self.plans[choice]
        piece = plan.pieces[index]
        out: dict[str, Any] = {"index": choice}
        if not self.chat:
            echo = self.call.options.echo if index == 0 else None
            out["text"] = (echo or "") + piece
        elif plan.tool is not None:
            delta = {"role": "assistant", "content": None} if index == 0 else {}
            out["delta"] = delta | {"tool_calls": [self._tool_call(choice, piece, index == 0)]}
        else:
            delta = {"role": "assistant"} if index == 0 else {}
            out["delta"] = delta | {"content": piece}
        offset = sum(map(len, plan.pieces[:index]))
        out["logprobs"] = self._logprobs([piece], offset)
        last = index == len(plan.pieces) - 1
        finish, reason = (plan.finish_reason, plan.stop_reason) if last else (None, None)
        return out | {"finish_reason": finish, "stop_reason": reason}

    async def events(self, handles: Sequence[EmulatedRequest]) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        include_usage = self.call.include_usage
        try:
            async for choice, index in merged(handles):
                chunk = self._head(obj) | {"choices": [self._chunk_choice(choice, index)]}
                if include_usage:
                    chunk["usage"] = None
                yield b"data: " + _dumps(chunk) + b"\n\n"
        except EmulatorError as exc:
            error = {"message": str(exc), "type": "InternalServerError", "param": None, "code": 500}
            yield b"data: " + _dumps({"error": error}) + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        records = [h.record for h in handles]
        if any(r is None or r.finish_reason == "abort" for r in records):
            return  # the client went away
        if include_usage:
            used = sum(r.completion_tokens for r in records if r is not None)
            chunk = self._head(obj) | {"choices": [], "usage": self._usage(used)}
            yield b"data: " + _dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"


class EventStream(Response):
    """Server-sent events that abort the engine request when the client disconnects.

    A watcher reads `receive` for `http.disconnect` while the events flow, so a request still
    queued (sending nothing yet) is aborted too; a failed send ends the stream the same way.
    """

    media_type = "text/event-stream"

    def __init__(self, handles: Sequence[EmulatedRequest], events: AsyncIterator[bytes]) -> None:
        self.handles = list(handles)
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handles = self.handles
        watcher = asyncio.create_task(cancel_on_disconnect(receive, handles))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-send (ASGI 2.4 servers raise, older ones ignore)
        finally:
            watcher.cancel()
            for handle in handles:
                handle.engine.cancel(handle)
            aclose: Callable[[], Awaitable[None]] | None = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            await asyncio.gather(watcher, return_exceptions=True)
