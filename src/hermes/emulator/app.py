"""The emulator's HTTP app: engines served by model name over a vLLM-compatible subset of the
OpenAI API (docs/gateway.md, "The emulator")."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from hermes.emulator.controls import Controls
from hermes.emulator.engine import (
    EmulatedEngine,
    EmulatedRequest,
    EmulatorError,
    RequestRejectedError,
)
from hermes.emulator.errors import ApiError, bad, error_response
from hermes.emulator.metrics import metrics_text
from hermes.emulator.output import plan_output
from hermes.emulator.parsing import (
    Call,
    chat_prompt_tokens,
    completion_prompt_tokens,
    generation_call,
    json_object,
)
from hermes.emulator.responses import EventStream, Shape, cancel_on_disconnect

_PROMETHEUS_TEXT = "text/plain; version=0.0.4"


class _Generation:
    """The generation endpoints, and the model list."""

    def __init__(self, engines: Mapping[str, EmulatedEngine], controls: Controls) -> None:
        self.engines = engines
        self.controls = controls
        self.created = int(time.time())

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(metrics_text(self.engines), media_type=_PROMETHEUS_TEXT)

    async def model(self, request: Request) -> Response:
        """`GET /v1/models/{id}`: one model, or a 404 in OpenAI's shape."""
        name = request.path_params["model"]
        for card in self._cards():
            if card["id"] == name:
                return JSONResponse(card)
        raise ApiError(404, f"The model `{name}` does not exist.", "model")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self._cards()})

    def _cards(self) -> list[dict[str, Any]]:
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
            for name, path in self.controls.adapters.items()
        ]
        return data

    async def chat(self, request: Request) -> Response:
        call = self._call(await json_object(request), chat_prompt_tokens, chat=True)
        return await self._serve(request, call, chat=True)

    async def completions(self, request: Request) -> Response:
        call = self._call(await json_object(request), completion_prompt_tokens, chat=False)
        return await self._serve(request, call, chat=False)

    def _engine(self, model: str) -> EmulatedEngine | None:
        engine = self.engines.get(model)
        if engine is None and model in self.controls.adapters:
            engine = next(iter(self.engines.values()))
        return engine

    def _call(
        self, body: dict[str, Any], prompt_tokens: Callable[[dict[str, Any]], int], chat: bool
    ) -> Call:
        model = body.get("model")
        if not isinstance(model, str):
            raise bad("`model` must be a string", "model")
        engine = self._engine(model)
        if engine is None:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")
        if self.controls.sleep_level:
            raise ApiError(503, "The engine is sleeping; POST /wake_up first.")
        return generation_call(body, model, engine, prompt_tokens(body), chat)

    def _submit(self, call: Call, input_: str, output_tokens: int) -> list[EmulatedRequest]:
        """One engine request per choice, each generating `output_tokens`."""
        engine, p, o = call.engine, call.prompt_tokens, call.max_tokens
        if p + o > engine.max_model_len:  # as vLLM checks it: on max_tokens, not on the answer
            raise bad(
                f"This model's maximum context length is {engine.max_model_len} tokens. "
                f"However, you requested {p + o} tokens ({p} in the {input_}, {o} in the "
                f"completion). Please reduce the length of the {input_} or completion.",
                input_,
            )
        handles: list[EmulatedRequest] = []
        try:
            for _ in range(call.n):
                handles.append(engine.submit(p, output_tokens, call.priority))
        except RequestRejectedError as exc:
            self._cancel(handles)
            raise bad(f"The request cannot be served: {exc.reason}", input_) from None
        except EmulatorError as exc:
            self._cancel(handles)
            raise ApiError(500, str(exc)) from None
        return handles

    @staticmethod
    def _cancel(handles: list[EmulatedRequest]) -> None:
        for handle in handles:
            handle.engine.cancel(handle)

    async def _serve(self, request: Request, call: Call, chat: bool) -> Response:
        plan = plan_output(call.options.spec(call.max_tokens))
        handles = self._submit(call, "messages" if chat else "prompt", len(plan.pieces))
        prefix = "chatcmpl" if chat else "cmpl"
        shape = Shape(call, chat, f"{prefix}-{uuid.uuid4().hex}", [plan] * call.n)
        if call.stream:
            return EventStream(handles, shape.events(handles))
        watcher = asyncio.create_task(cancel_on_disconnect(request.receive, handles))
        try:
            records = [await handle.result() for handle in handles]
        except EmulatorError as exc:
            return error_response(500, str(exc))
        finally:
            watcher.cancel()
            self._cancel(handles)
            await asyncio.gather(watcher, return_exceptions=True)
        return JSONResponse(shape.whole(records))


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
    engines = dict(engines)
    controls = Controls(engines, wake_s, lora_load_s)
    api = _Generation(engines, controls)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for engine in api.engines.values():
                await engine.aclose()

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, exc.param)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, exc.detail, headers=exc.headers)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/v1/models/{model:path}", api.model, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/metrics", api.metrics, methods=["GET"]),
            Route("/sleep", controls.sleep, methods=["POST"]),
            Route("/wake_up", controls.wake_up, methods=["POST"]),
            Route("/is_sleeping", controls.is_sleeping, methods=["GET"]),
            Route("/v1/load_lora_adapter", controls.load_lora, methods=["POST"]),
            Route("/v1/unload_lora_adapter", controls.unload_lora, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.api = controls
    return app
