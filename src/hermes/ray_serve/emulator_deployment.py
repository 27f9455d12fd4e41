"""The emulated engine (`hermes.emulator`: the engine model in real time, made-up tokens, no
model) as a Ray Serve deployment with Ray Serve LLM's call shape, for tests and for trying
Serve-deployment upstreams without a GPU:

    serve.run(emulator_deployment(["m"], num_replicas=2), name="llm", route_prefix=None)
    # gateway config: backends: [{name: llm, url: "serve://llm/HermesEmulator",
    #                             models: [m], concurrency: 16}]

`chat(request, raw_request_info=None)` and `completions(...)` are async generators, as
`LLMServer`'s: a whole answer is one dict; a streamed one comes as lists of SSE strings
(`data: {...}\\n\\n`); an error is one `{"error": {"message", "type", "code"}}`. The request
is the OpenAI body as a dict, or a request object (its `model_dump`). Each answer's
`system_fingerprint` is the Serve replica that made it (affinity is visible to a client).

Each replica runs the emulator's own HTTP app in-process (ASGI, no socket), so what it accepts,
refuses and answers is the emulator's (docs/emulator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from ray import serve
from starlette.types import ASGIApp, Message

from hermes.emulator.server import emulated_app
from hermes.gateway.config import GatewayConfig
from hermes.ray_serve.serve_upstream import serve_target

ROUTER = "hermes.ray_serve.request_router.HermesRequestRouter"


class HermesEmulator:
    """One emulated engine per replica, serving `models`."""

    def __init__(
        self,
        models: Sequence[str],
        profile: str = "llama-2-7b",
        gpu: str = "a100",
        max_num_seqs: int = 256,
        time_scale: float = 1.0,
        replica: str | None = None,
    ) -> None:
        """`replica`: its name in answers; by default its Serve replica id."""
        self.app = emulated_app(
            list(models), profile=profile, gpu=gpu, max_num_seqs=max_num_seqs, time_scale=time_scale
        )
        self.replica = replica or serve.get_replica_context().replica_id.unique_id

    async def chat(
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[dict[str, Any] | list[str], None]:
        async for item in self._generate("/v1/chat/completions", request):
            yield item

    async def completions(
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[dict[str, Any] | list[str], None]:
        async for item in self._generate("/v1/completions", request):
            yield item

    async def _generate(
        self, path: str, request: Any
    ) -> AsyncGenerator[dict[str, Any] | list[str], None]:
        dump = getattr(request, "model_dump", None)
        body = dump(mode="json", exclude_unset=True) if callable(dump) else request
        if not isinstance(body, dict):
            yield _error(400, f"the request must be a JSON object, not {type(body).__name__}")
            return
        answer = asgi_post(self.app, path, json.dumps(body).encode())
        try:
            status = await anext(answer)
            assert isinstance(status, int)
            if status != 200 or not body.get("stream"):
                raw = b"".join([piece async for piece in answer if isinstance(piece, bytes)])
                yield self._whole(status, raw)
                return
            buffer = ""
            async for piece in answer:
                assert isinstance(piece, bytes)
                *events, buffer = (buffer + piece.decode()).split("\n\n")
                if events:
                    yield [self._mark(e) + "\n\n" for e in events if e]
            if buffer.strip():
                yield [self._mark(buffer) + "\n\n"]
        finally:
            await answer.aclose()

    def _whole(self, status: int, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            return _error(500, f"the emulator answered {status} with no JSON")
        if status != 200:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message", "") if isinstance(error, dict) else str(data)
            kind = error.get("type", "server_error") if isinstance(error, dict) else "server_error"
            return _error(status, message, kind)
        data["system_fingerprint"] = self.replica
        return dict(data)

    def _mark(self, event: str) -> str:
        """A `data: {...}` event with this replica as its `system_fingerprint`."""
        if not event.startswith("data: {"):
            return event
        data = json.loads(event[6:])
        data["system_fingerprint"] = self.replica
        return "data: " + json.dumps(data)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


async def asgi_post(app: ASGIApp, path: str, body: bytes) -> AsyncGenerator[int | bytes, None]:
    """POST `body` (JSON) to `app` in-process: the status, then the body's pieces as they come.
    Closing the generator early is a client hanging up: the app hears `http.disconnect`."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": None,
        "server": None,
    }
    messages: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield int(message["status"])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body"):
                    break
    finally:
        gone.set()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def emulator_deployment(
    models: Sequence[str],
    *,
    name: str = "HermesEmulator",
    num_replicas: int = 2,
    max_ongoing_requests: int = 64,
    max_excess: int = 8,
    num_cpus: float = 0,
    **engine: Any,
) -> serve.Application:
    """An application of `num_replicas` emulator replicas placed by `HermesRequestRouter`
    (`max_excess`); `engine`: `profile`, `gpu`, `max_num_seqs`, `time_scale`."""
    deployment = serve.deployment(
        name=name,
        num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": num_cpus},
        request_router_config=router_config(max_excess),
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )(HermesEmulator)
    return deployment.bind(list(models), **engine)


def router_config(max_excess: int = 8) -> dict[str, Any]:
    """`request_router_config` of a deployment placed by `HermesRequestRouter` (Serve takes
    the dict as a `RequestRouterConfig`)."""
    return {"request_router_class": ROUTER, "request_router_kwargs": {"max_excess": max_excess}}


EMULATED_REPLICAS = 2  # of an emulated serve:// backend that hermes serve --ray deploys


def deploy_emulated(config: GatewayConfig) -> list[str]:
    """Deploy, for each `emulated` backend whose URL is `serve://APP/DEPLOYMENT` and whose
    application is not running, the emulator as that deployment (`EMULATED_REPLICAS`
    replicas, placed by `HermesRequestRouter` with `session_max_excess`); the applications
    started, for `serve.delete` at the end."""
    running = set(serve.status().applications)
    started = []
    for b in config.backends:
        target = serve_target(b.url)
        if b.kind != "emulated" or target is None or target[0] in running:
            continue
        app, name = target
        engine = emulator_deployment(
            b.models,
            name=name,
            num_replicas=EMULATED_REPLICAS,
            max_excess=config.session_max_excess,
            profile=b.emulate_model,
            gpu=b.emulate_gpu,
            max_num_seqs=b.emulate_max_num_seqs,
            time_scale=b.time_scale,
        )
        serve.run(engine, name=app, route_prefix=None)
        running.add(app)
        started.append(app)
    return started
