"""An emulated inference server: the engine model run in real time behind an OpenAI-style API.

`EmulatedEngine` is an asyncio shell around one pure `Engine` (planned one iteration at a
time, so tokens stream per iteration): a background task plans a step, sleeps until the step
ends on the wall clock, completes it and hands each sampled token to its request. Model time
runs `1 / time_scale` times as fast as the wall clock (0.1: ten times faster than the cost
model says). Steps follow each other on the model's timeline: the next step starts where the
last ended, or at the latest arrival if that is later, so sleep overshoot does not accumulate;
the wall clock only falls behind when the host cannot keep up.

`emulator_app` serves engines by model name over a vLLM-compatible subset of the OpenAI API,
so a gateway can be developed and tested with no GPU and no other server:

- `POST /v1/chat/completions`, `POST /v1/completions`: JSON, or server-sent events
  (`data: {chunk}\\n\\n` per token, then `data: [DONE]\\n\\n`); one choice per request.
- `GET /v1/models`, `GET /health`.
- vLLM's development-mode controls: `POST /sleep?level=1|2`, `POST /wake_up`,
  `GET /is_sleeping`, and runtime LoRA adapters, `POST /v1/load_lora_adapter` and
  `POST /v1/unload_lora_adapter` (`{"lora_name", "lora_path"}`). Waking takes `wake_s` and
  loading an adapter `lora_load_s` of wall time; a sleeping server answers generation requests
  with 503, as a gateway must wake it first. An adapter is served by the server's first engine.

What the emulator makes up, deterministically:

- prompt tokens: `ceil(characters / 4)`, at least 1, over every message's text content (chat)
  or the prompt string (completions); a completions prompt given as token ids counts them;
- output: exactly `max_completion_tokens` or `max_tokens` (default 16) tokens, never an early
  stop, so `finish_reason` is always "length"; token i reads `f" tok{i}"`;
- `priority` (vLLM's extension; an integer, lower runs first) sets the engine priority;
  sampling fields (`temperature`, `seed`, `top_p`, ...) are accepted and ignored.

Requests the engine can never serve (longer than `max_model_len`, or larger than the KV pool)
get a 400 with vLLM's message; an unknown model a 404; malformed bodies a 400 naming the
field. A client that disconnects (streaming or not) aborts its engine request at once, also
while it is still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest
from hermes.engine.scheduler import Engine

CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 16

FinishReason = Literal["length", "abort"]


def prompt_tokens_for_text(text: str) -> int:
    """The emulator's tokenizer: one token per 4 characters, rounded up, at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def filler_token(index: int) -> str:
    """The text of generated token `index` (0-based)."""
    return f" tok{index}"


# The engine shell ------------------------------------------------------------------------------


class RequestRejectedError(ValueError):
    """The engine can never serve this request (`reason` is the engine's explanation)."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int, reason: str):
        super().__init__(reason)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        self.reason = reason


class EmulatorError(RuntimeError):
    """The emulated engine stopped (closed, or its loop failed) before the request ended."""


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """How one request went, in model seconds since its engine started.

    `finish_reason` is "length" (all `max_tokens` generated) or "abort" (cancelled, or the
    engine closed); `first_token_s` is None when no token came.
    """

    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    arrival_s: float
    first_token_s: float | None
    finish_s: float

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s


class EmulatedRequest:
    """A submitted request: `async for index in handle` yields token indices 0, 1, ... as they
    are sampled and stops when the request ends; `await handle.result()` gives the record.

    Iterate it once; the iteration raises `EmulatorError` if the engine failed.
    """

    __slots__ = ("_done", "_error", "_queue", "_record", "_req", "engine", "id")

    def __init__(self, engine: EmulatedEngine, req: EngineRequest, request_id: str) -> None:
        self.engine = engine
        self.id = request_id
        self._req = req
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._done = asyncio.Event()
        self._record: GenerationRecord | None = None
        self._error: BaseException | None = None

    @property
    def prompt_tokens(self) -> int:
        return self._req.prompt_tokens

    @property
    def max_tokens(self) -> int:
        return self._req.output_tokens

    @property
    def priority(self) -> float:
        return self._req.priority

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def record(self) -> GenerationRecord | None:
        """The final record once the request has ended, else None."""
        return self._record

    def __aiter__(self) -> EmulatedRequest:
        return self

    async def __anext__(self) -> int:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # iterating again ends at once
            if self._error is not None:
                raise EmulatorError(f"emulated engine failed: {self._error!r}") from self._error
            raise StopAsyncIteration
        return item

    async def result(self) -> GenerationRecord:
        """Wait for the end (tokens need not be consumed) and return the record."""
        await self._done.wait()
        if self._error is not None:
            raise EmulatorError(f"emulated engine failed: {self._error!r}") from self._error
        assert self._record is not None
        return self._record

    # Written by the engine shell.

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        r = self._req
        assert r.finish_s is not None
        self._record = GenerationRecord(
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.generated,
            finish_reason=reason,
            arrival_s=r.arrival_s,
            first_token_s=r.first_token_s,
            finish_s=r.finish_s,
        )
        self._error = error
        self._queue.put_nowait(None)
        self._done.set()


class EmulatedEngine:
    """One `Engine` run in (scaled) real time on the running asyncio event loop.

    The engine starts on the first `submit`, on that loop, and stays bound to it; `aclose`
    (or `async with`) stops it and aborts what is outstanding. `engine` is the pure model, for
    reading (`idle`, `outstanding`, `stats`, `config`); drive it only through this shell.
    """

    def __init__(
        self,
        cost: StepCostModel,
        config: EngineConfig | None = None,
        *,
        time_scale: float = 1.0,
    ) -> None:
        if (
            isinstance(time_scale, bool)
            or not isinstance(time_scale, int | float)
            or not math.isfinite(time_scale)
            or time_scale <= 0
        ):
            raise ValueError(
                f"EmulatedEngine: time_scale must be finite and > 0, got {time_scale!r}"
            )
        self.engine = Engine(cost, config, decode_runs=False)
        self.time_scale = float(time_scale)
        self._live: dict[EngineRequest, EmulatedRequest] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._origin = 0.0
        self._floor = 0.0  # the next step starts no earlier (model seconds)
        self._ids = count()
        self._closed = False
        self._error: BaseException | None = None

    # Queries -------------------------------------------------------------------------------

    @property
    def max_model_len(self) -> int:
        return self.engine.config.max_model_len

    @property
    def idle(self) -> bool:
        """No request waiting, running or swapped out."""
        return self.engine.idle

    @property
    def outstanding(self) -> int:
        return self.engine.outstanding

    def now(self) -> float:
        """Model seconds since the engine started (0 before it has)."""
        if self._loop is None:
            return 0.0
        return (self._loop.time() - self._origin) / self.time_scale

    # Inputs --------------------------------------------------------------------------------

    def submit(self, prompt_tokens: int, max_tokens: int, priority: int = 0) -> EmulatedRequest:
        """Queue a generation of exactly `max_tokens` tokens; lower `priority` runs first.

        Raises `RequestRejectedError` when the engine can never serve it, `EmulatorError` after
        `aclose` or a failure, RuntimeError outside the engine's event loop.
        """
        self._start()
        now = self.now()
        request_id = f"emu-{next(self._ids)}"
        req = EngineRequest(request_id, prompt_tokens, max_tokens, now, priority=priority)
        if not self.engine.add(req, now):
            assert req.reason is not None
            raise RequestRejectedError(prompt_tokens, max_tokens, self.max_model_len, req.reason)
        handle = EmulatedRequest(self, req, request_id)
        self._live[req] = handle
        self._floor = max(self._floor, now)
        self._wake.set()
        return handle

    def cancel(self, handle: EmulatedRequest) -> bool:
        """Abort a request now (its iteration ends, reason "abort"); False if it had ended."""
        if handle.engine is not self:
            raise ValueError("EmulatedEngine.cancel: the request belongs to another engine")
        req = handle._req
        if handle.done or not self.engine.abort(req, self.now()):
            return False
        del self._live[req]
        handle._finish("abort")
        return True

    def set_priority(self, handle: EmulatedRequest, priority: int) -> None:
        """Re-rank a queued request; it takes effect at the next iteration."""
        if handle.engine is not self:
            raise ValueError("EmulatedEngine.set_priority: the request belongs to another engine")
        if not handle.done:
            self.engine.set_priority(handle._req, priority)

    # Life cycle ----------------------------------------------------------------------------

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise EmulatorError("the emulated engine is closed")
        if self._error is not None:
            raise EmulatorError(f"emulated engine failed: {self._error!r}") from self._error
        if self._task is None:
            self._loop = loop
            self._origin = loop.time()
            self._task = loop.create_task(self._run(), name="hermes-emulated-engine")
        elif self._loop is not loop:
            raise RuntimeError("EmulatedEngine is bound to another event loop")

    async def aclose(self) -> None:
        """Stop the engine; outstanding requests end with reason "abort". Idempotent."""
        self._closed = True
        for handle in list(self._live.values()):
            self.cancel(handle)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> EmulatedEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine
        live = self._live
        try:
            while True:
                if engine.idle:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                step = engine.plan(self._floor)
                assert step is not None
                # Always yield once, even when behind, so the server keeps serving.
                wall_end = self._origin + step.end_s * self.time_scale
                await asyncio.sleep(max(0.0, wall_end - loop.time()))
                before = [(r, r.generated) for r, _, _ in step.chunks]
                result = engine.complete(step)
                self._floor = max(self._floor, step.end_s)
                for r, generated in before:
                    handle = live.get(r)
                    if handle is not None:  # None: aborted while the step was in flight
                        for index in range(generated, r.generated):
                            handle._queue.put_nowait(index)
                for r in result.finished:
                    live.pop(r)._finish("length")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # fail every request rather than leave clients hanging
            self._error = exc
            now = self.now()
            for req, handle in list(live.items()):
                engine.abort(req, now)
                handle._finish("abort", error=exc)
            live.clear()


# The HTTP layer ---------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    503: "ServiceUnavailableError",
}


def _error_response(
    status: int,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error shape, as vLLM sends it."""
    error = {
        "message": message,
        "type": _ERROR_TYPES.get(status, "InternalServerError"),
        "param": param,
        "code": status,
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _bad(message: str, param: str | None = None) -> _ApiError:
    return _ApiError(400, message, param)


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _opt_int(body: Mapping[str, Any], name: str, minimum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"`{name}` must be an integer, got {_show(value)}", name)
    if minimum is not None and value < minimum:
        raise _bad(f"`{name}` must be >= {minimum}, got {value}", name)
    return value


def _opt_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"`{name}` must be a boolean, got {_show(value)}", name)
    return value


@dataclass(frozen=True, slots=True)
class _Call:
    model: str
    engine: EmulatedEngine
    prompt_tokens: int
    max_tokens: int
    priority: int
    stream: bool
    include_usage: bool


def _content_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _bad(f"`{where}[{k}]` must be a text part; only text is supported", where)
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"`{where}[{k}].text` must be a string", where)
            parts.append(text)
        return "".join(parts)
    raise _bad(f"`{where}` must be a string or a list of text parts", where)


def _chat_prompt_tokens(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("`messages` must be a non-empty list of messages", "messages")
    text = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"`messages[{k}]` must be an object", "messages")
        if not isinstance(message.get("role"), str):
            raise _bad(f"`messages[{k}].role` must be a string", "messages")
        text.append(_content_text(message.get("content"), f"messages[{k}].content"))
    return prompt_tokens_for_text("".join(text))


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _completion_prompt_tokens(body: Mapping[str, Any]) -> int:
    prompt = body.get("prompt")
    # One prompt only: a string, token ids, or a batch of one of either.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt_tokens_for_text(prompt)
    if _is_token_ids(prompt) and prompt:
        return len(prompt)
    raise _bad(
        "`prompt` must be a string or a non-empty list of token ids (one prompt per request)",
        "prompt",
    )


class _Api:
    def __init__(
        self, engines: Mapping[str, EmulatedEngine], wake_s: float, lora_load_s: float
    ) -> None:
        self.engines = dict(engines)
        self.created = int(time.time())
        self.wake_s = wake_s
        self.lora_load_s = lora_load_s
        self.sleep_level = 0  # 0: awake
        self.adapters: dict[str, str] = {}  # LoRA name -> path
        # What the controls were asked to do, in order, for tests and the demo to read.
        self.control_log: list[tuple[str, str]] = []

    # Endpoints -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        data = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "hermes-emulator",
                "root": name,
                "parent": None,
                "max_model_len": engine.max_model_len,
            }
            for name, engine in self.engines.items()
        ]
        base = next(iter(self.engines), None)
        data += [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "hermes-emulator",
                "root": path,
                "parent": base,
            }
            for name, path in self.adapters.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def is_sleeping(self, request: Request) -> Response:
        return JSONResponse({"is_sleeping": self.sleep_level > 0})

    async def sleep(self, request: Request) -> Response:
        raw = request.query_params.get("level", "1")
        if raw not in ("1", "2"):
            raise _bad(f"`level` must be 1 or 2, got {raw[:20]!r}", "level")
        busy = sum(e.outstanding for e in self.engines.values())
        if busy:
            raise _ApiError(409, f"{busy} requests are in progress; sleep when idle")
        self.sleep_level = int(raw)
        self.control_log.append(("sleep", raw))
        return Response(status_code=200)

    async def wake_up(self, request: Request) -> Response:
        if self.sleep_level:
            self.control_log.append(("wake_up", str(self.sleep_level)))
            await asyncio.sleep(self.wake_s)
            self.sleep_level = 0
        return Response(status_code=200)

    async def load_lora(self, request: Request) -> Response:
        name, path = self._lora_fields(await self._body(request), need_path=True)
        if name in self.adapters or name in self.engines:
            raise _bad(f"The lora adapter '{name}' has already been loaded.", "lora_name")
        self.control_log.append(("load_lora_adapter", name))
        await asyncio.sleep(self.lora_load_s)
        self.adapters[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.", status_code=200)

    async def unload_lora(self, request: Request) -> Response:
        name, _ = self._lora_fields(await self._body(request), need_path=False)
        if self.adapters.pop(name, None) is None:
            raise _ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        self.control_log.append(("unload_lora_adapter", name))
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)

    def _lora_fields(self, body: dict[str, Any], need_path: bool) -> tuple[str, str]:
        name, path = body.get("lora_name"), body.get("lora_path", "")
        if not isinstance(name, str) or not name:
            raise _bad("`lora_name` must be a non-empty string", "lora_name")
        if not isinstance(path, str) or (need_path and not path):
            raise _bad("`lora_path` must be a non-empty string", "lora_path")
        return name, path

    def _engine(self, model: str) -> EmulatedEngine | None:
        engine = self.engines.get(model)
        if engine is None and model in self.adapters:
            engine = next(iter(self.engines.values()))
        return engine

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        call = self._call(body, _chat_prompt_tokens)
        return await self._serve(request, call, chat=True)

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        call = self._call(body, _completion_prompt_tokens)
        return await self._serve(request, call, chat=False)

    # Parsing -------------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad(f"Invalid JSON in request body: {exc}") from None
        if not isinstance(body, dict):
            raise _bad(f"The request body must be a JSON object, got {type(body).__name__}")
        return body

    def _call(self, body: dict[str, Any], prompt_tokens: Callable[[dict[str, Any]], int]) -> _Call:
        model = body.get("model")
        if not isinstance(model, str):
            raise _bad("`model` must be a string", "model")
        engine = self._engine(model)
        if engine is None:
            raise _ApiError(404, f"The model `{model}` does not exist.", "model")
        if self.sleep_level:
            raise _ApiError(503, "The engine is sleeping; POST /wake_up first.")
        tokens = prompt_tokens(body)
        max_tokens = _opt_int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _opt_int(body, "max_tokens", 1)
        priority = _opt_int(body, "priority") or 0
        n = _opt_int(body, "n", 1)
        if n is not None and n != 1:
            raise _bad(f"`n` must be 1 (the emulator returns one choice), got {n}", "n")
        stream = _opt_bool(body, "stream")
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not stream:
                raise _bad("Stream options can only be defined when `stream=True`.", "stream")
            if not isinstance(options, dict):
                raise _bad("`stream_options` must be an object", "stream_options")
            include_usage = _opt_bool(options, "include_usage")
        return _Call(
            model=model,
            engine=engine,
            prompt_tokens=tokens,
            max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
            priority=priority,
            stream=stream,
            include_usage=include_usage,
        )

    # Serving -------------------------------------------------------------------------------

    def _submit(self, call: _Call, input_: str) -> EmulatedRequest:
        try:
            return call.engine.submit(call.prompt_tokens, call.max_tokens, call.priority)
        except RequestRejectedError as exc:
            p, o, limit = exc.prompt_tokens, exc.max_tokens, exc.max_model_len
            if p + o > limit:
                message = (
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {p + o} tokens ({p} in the {input_}, {o} in the completion). "
                    f"Please reduce the length of the {input_} or completion."
                )
            else:
                message = f"The request cannot be served: {exc.reason}"
            raise _bad(message, input_) from None
        except EmulatorError as exc:
            raise _ApiError(500, str(exc)) from None

    async def _serve(self, request: Request, call: _Call, chat: bool) -> Response:
        handle = self._submit(call, "messages" if chat else "prompt")
        shape = _Shape(call, chat, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}")
        if call.stream:
            return _EventStream(handle, shape.events(handle))
        watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, handle))
        try:
            tokens = [index async for index in handle]
        except EmulatorError as exc:
            return _error_response(500, str(exc))
        finally:
            watcher.cancel()
            handle.engine.cancel(handle)
            await asyncio.gather(watcher, return_exceptions=True)
        record = handle.record
        assert record is not None
        return JSONResponse(shape.whole(tokens, record))


async def _cancel_on_disconnect(receive: Receive, handle: EmulatedRequest) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    handle.engine.cancel(handle)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Shape:
    """Response bodies shaped as vLLM shapes them."""

    def __init__(self, call: _Call, chat: bool, response_id: str) -> None:
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


class _EventStream(Response):
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
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, handle))
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


def emulator_app(
    engines: Mapping[str, EmulatedEngine], *, wake_s: float = 0.0, lora_load_s: float = 0.0
) -> Starlette:
    """An OpenAI-compatible app serving each engine under its model name; `wake_s` and
    `lora_load_s` are the wall seconds a wake-up and an adapter load take. `app.state.api`
    holds the controls' state (`sleep_level`, `adapters`, `control_log`).

    Its lifespan closes the engines on shutdown; an app that mounts this one (a mounted app's
    lifespan does not run) should `await engine.aclose()` in its own.
    """
    for name, value in (("wake_s", wake_s), ("lora_load_s", lora_load_s)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"emulator_app: {name} must be finite and >= 0, got {value!r}")
    api = _Api(engines, wake_s, lora_load_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for engine in api.engines.values():
                await engine.aclose()

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _ApiError)
        return _error_response(exc.status, exc.message, exc.param)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error_response(exc.status_code, exc.detail, headers=exc.headers)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/sleep", api.sleep, methods=["POST"]),
            Route("/wake_up", api.wake_up, methods=["POST"]),
            Route("/is_sleeping", api.is_sleeping, methods=["GET"]),
            Route("/v1/load_lora_adapter", api.load_lora, methods=["POST"]),
            Route("/v1/unload_lora_adapter", api.unload_lora, methods=["POST"]),
        ],
        exception_handlers={_ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.api = api
    return app
