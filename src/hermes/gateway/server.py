"""The gateway: an OpenAI-compatible endpoint that queues calls in policy order in front of
upstream engines, and learns applications' demand as they run.

The policy object is the simulator's: `make_policy(config.policy, ctx)`. A call's rank comes
from its application's view (`AppTracker`), waits in the `Dispatcher` until an upstream slot is
free, and travels upstream as the engine's request priority where the engine has one.

Every accepted call ends in a response or an explicit error: 400/401/404/413/429 before it
queues, 502/504 when its upstream fails before the first byte (after one retry on another
replica), and an SSE `error` event when the failure comes mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hermes.core.demand_cost import DemandCost
from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.gateway.apps import AppTracker, CallTicket, GatewayApp
from hermes.gateway.config import GatewayConfig
from hermes.gateway.context import HeaderError, parse_context
from hermes.gateway.dispatch import Dispatcher, Grant, QueueFullError, Upstream, Waiting
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.run_store import RunStore
from hermes.gateway.upstream import UpstreamClient
from hermes.policies.base import Policy, PolicyContext
from hermes.policies.registry import make_policy

Clock = Callable[[], float]


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """About one token per four characters of the prompt; only a first guess for ranking:
    the upstream's usage replaces it when the call ends."""
    text = 0
    if "messages" in body:
        for m in body["messages"]:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                text += len(c)
            elif isinstance(c, list):
                text += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
    else:
        p = body.get("prompt")
        text = len(p) if isinstance(p, str) else sum(len(str(x)) for x in p or [])
    return max(1, text // 4)


def _check_body(body: Any, chat: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "'model' is required and must be a non-empty string")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise ApiError(400, "'messages' must be a non-empty list of objects")
    else:
        p = body.get("prompt")
        if not (isinstance(p, str) or (isinstance(p, list) and p)):
            raise ApiError(400, "'prompt' must be a string or a non-empty list")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, f"'stream' must be true or false, got {body['stream']!r}")
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ApiError(400, f"'{key}' must be a positive integer, got {v!r}")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object")
    return body


@dataclass(slots=True, eq=False)
class _Call:
    ticket: CallTicket
    model: str
    body: dict[str, Any]
    arrived_s: float
    waiting: Waiting | None = None
    future: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    retried: bool = False


class Gateway:
    """The gateway's state and its HTTP handlers; `app` is the ASGI application."""

    def __init__(
        self,
        config: GatewayConfig,
        policy: Policy | None = None,
        clock: Clock = time.monotonic,
        on_run: Callable[[AppRun], None] | None = None,
        cost: DemandCost | None = None,
    ) -> None:
        self.config = config
        self.policy = policy or make_policy(config.policy, PolicyContext())
        self.clock = clock
        self.on_run = on_run
        self.tracker = AppTracker(cost)
        self.metrics = GatewayMetrics()
        self.clients = {
            b.name: UpstreamClient(b, config.connect_timeout_s, config.upstream_timeout_s)
            for b in config.backends
        }
        self.dispatcher = Dispatcher(
            [Upstream(b.name, frozenset(b.models), b.concurrency) for b in config.backends],
            limit=config.queue_limit,
        )
        self.graphs: dict[str, PDGraph] = {}  # what the policy learned, for inspection
        self.store: RunStore | None = None
        self._calls: dict[int, _Call] = {}  # by id(Waiting)
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/metrics", self.prometheus, methods=["GET"]),
                Route("/v1/apps/{app_id}/events", self.app_event, methods=["POST"]),
                Route("/v1/apps/{app_id}/finish", self.app_finish, methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )

    # Life cycle ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        for c in self.clients.values():
            await c.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self._every(self.config.policy_options.rank_interval_s, self._rerank))
        )
        self._tasks.append(loop.create_task(self._every(1.0, self._reap_idle_apps)))

    async def stop(self, drain_s: float = 30.0) -> None:
        """Stop taking calls, let those in flight finish (up to `drain_s`), then close."""
        self._draining = True
        deadline = self.clock() + drain_s
        while (self.dispatcher.running or self.dispatcher.queued) and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for c in self.clients.values():
            await c.close()
        if self.store is not None:
            self.store.close()

    async def _every(self, period_s: float, fn: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(period_s)
            fn()

    def _rerank(self) -> None:
        if not self.policy.dynamic or not self.dispatcher.queued:
            return
        now = self.clock()

        def rank(w: Waiting) -> float:
            call = self._calls[id(w)]
            t = call.ticket
            return self.policy.priority(t.info, t.app.view, now)

        self.dispatcher.rerank(rank)

    def _reap_idle_apps(self) -> None:
        now = self.clock()
        for app in self.tracker.idle(now, self.config.app_idle_timeout_s):
            self._finish_app(app, now)
        self.metrics.apps_active.set(len(self.tracker.apps))

    def _finish_app(self, app: GatewayApp, now: float) -> None:
        self.metrics.act.labels(app.app_type).observe(
            max(0.0, app.last_seen_s - app.view.arrival_s)
        )
        self.policy.on_done(app.view, now)
        run = self.tracker.finish(app)
        # A call without headers shows no application structure to learn from; storing one
        # run per plain call would only fill the store.
        if run is not None and self.on_run is not None and not app.ephemeral:
            self.on_run(run)

    # Helpers ---------------------------------------------------------------------------------

    def _auth(self, request: Request, admin: bool = False) -> None:
        key = self.config.admin_key if admin else self.config.api_key
        if key is None:
            return
        if request.headers.get("authorization") != f"Bearer {key}":
            raise ApiError(401, "missing or wrong bearer token", "authentication_error")

    async def _json(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, f"bad Content-Length header {declared[:20]!r}")
            if int(declared) > limit:
                raise ApiError(413, f"the body is {declared} bytes; the limit is {limit}")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from None

    def _grant(self, grants: list[Grant]) -> None:
        for g in grants:
            call = self._calls.get(id(g.call))
            if call is not None and not call.future.done():
                call.future.set_result(g.upstream)
        self.metrics.waiting.set(self.dispatcher.queued)
        self.metrics.running.set(self.dispatcher.running)

    def _enqueue(self, call: _Call, priority: float) -> None:
        try:
            waiting, grants = self.dispatcher.submit(call.ticket, call.model, priority)
        except QueueFullError:
            raise ApiError(
                429, "the gateway's queue is full; retry later", "rate_limit_error"
            ) from None
        call.waiting = waiting
        self._calls[id(waiting)] = call
        self._grant(grants)

    def _release(self, call: _Call, upstream: str) -> None:
        if call.waiting is not None:
            self._calls.pop(id(call.waiting), None)
        self._grant(self.dispatcher.release(upstream))

    # Handlers --------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._completion(request, "/v1/chat/completions", chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._completion(request, "/v1/completions", chat=False)

    async def models(self, request: Request) -> Response:
        try:
            self._auth(request)
        except ApiError as e:
            return e.response()
        data = [
            {"id": m, "object": "model", "owned_by": "hermes"} for m in self.dispatcher.models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, request: Request) -> Response:
        status = 503 if self._draining else 200
        return JSONResponse(
            {
                "status": "draining" if self._draining else "ok",
                "queued": self.dispatcher.queued,
                "running": self.dispatcher.running,
                "apps": len(self.tracker.apps),
            },
            status_code=status,
        )

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def app_event(self, request: Request) -> Response:
        try:
            self._auth(request, admin=self.config.admin_key is not None)
            body = await self._json(request)
            if not isinstance(body, dict):
                raise ApiError(400, "the event must be a JSON object")
            kind, stage = body.get("event"), body.get("stage")
            if kind not in ("stage_started", "stage_finished"):
                raise ApiError(
                    400, f"'event' must be 'stage_started' or 'stage_finished', got {kind!r}"
                )
            if not isinstance(stage, str) or not stage:
                raise ApiError(400, "'stage' must be a non-empty string")
            app = self.tracker.apps.get(request.path_params["app_id"])
            now = self.clock()
            if app is None:
                ctx = parse_context(
                    {
                        "x-hermes-app-id": request.path_params["app_id"],
                        "x-hermes-app-type": str(body.get("app_type", "default")),
                    }
                )
                app, _ = self.tracker.app_for(ctx, now)
                self.policy.on_arrival(app.view, now)
            if kind == "stage_started":
                backend = body.get("backend", stage)
                if not isinstance(backend, str) or not backend:
                    raise ApiError(400, "'backend' must be a non-empty string")
                self.tracker.tool_started(app, stage, backend, now)
            elif not self.tracker.tool_finished(app, stage, now):
                raise ApiError(409, f"tool stage {stage!r} is not in progress for this application")
        except (ApiError, HeaderError) as e:
            err = e if isinstance(e, ApiError) else ApiError(400, str(e))
            return err.response()
        return JSONResponse({"ok": True})

    async def app_finish(self, request: Request) -> Response:
        try:
            self._auth(request, admin=self.config.admin_key is not None)
        except ApiError as e:
            return e.response()
        app = self.tracker.apps.get(request.path_params["app_id"])
        if app is None:
            return ApiError(
                404, "no application in progress with this id", "not_found_error"
            ).response()
        if app.in_flight:
            return ApiError(409, f"the application has {app.in_flight} calls in flight").response()
        self._finish_app(app, self.clock())
        return JSONResponse({"ok": True})

    async def _completion(self, request: Request, path: str, chat: bool) -> Response:
        try:
            if self._draining:
                raise ApiError(503, "the gateway is shutting down", "unavailable")
            self._auth(request)
            body = _check_body(await self._json(request), chat)
            ctx = parse_context(request.headers)
            if not self.dispatcher.serves(body["model"]):
                raise ApiError(
                    404,
                    f"model {body['model']!r} is not served here; see /v1/models",
                    "not_found_error",
                )
        except (ApiError, HeaderError) as e:
            err = e if isinstance(e, ApiError) else ApiError(400, str(e))
            self.metrics.rejections.labels(str(err.status)).inc()
            headers = {"Retry-After": "1"} if err.status == 429 else None
            return err.response(headers)
        now = self.clock()
        app, created = self.tracker.app_for(ctx, now)
        if created:
            self.policy.on_arrival(app.view, now)
        ticket = self.tracker.start_call(app, ctx.stage, estimate_prompt_tokens(body), now)
        call = _Call(ticket, body["model"], body, now)
        try:
            self._enqueue(call, self.policy.priority(ticket.info, app.view, now))
        except ApiError as e:
            self._end_call(call, 0, 0)
            self.metrics.rejections.labels(str(e.status)).inc()
            return e.response({"Retry-After": "1"})
        upstream = await self._wait_turn(request, call)
        if upstream is None:  # the client went away while queued
            self._end_call(call, 0, 0)
            return Response(status_code=499)
        self.metrics.queue_time.observe(self.clock() - now)
        if body.get("stream"):
            return StreamingResponse(
                self._stream(call, upstream, path),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await self._unary(call, upstream, path)

    async def _wait_turn(self, request: Request, call: _Call) -> str | None:
        if call.future.done():
            return call.future.result()

        async def disconnected() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return

        watch: asyncio.Future[None] = asyncio.ensure_future(disconnected())
        waiters: set[asyncio.Future[Any]] = {call.future, watch}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if call.future.done():
            return call.future.result()
        assert call.waiting is not None
        self.dispatcher.cancel(call.waiting)
        self._calls.pop(id(call.waiting), None)
        self._grant([])
        return None

    def _end_call(self, call: _Call, prompt: int, completion: int) -> None:
        now = self.clock()
        t = call.ticket
        self.tracker.end_call(t, prompt, completion, now)
        if t.app.ephemeral and t.app.in_flight == 0:
            self._finish_app(t.app, now)

    def _upstream_body(self, call: _Call, upstream: str, stream: bool) -> dict[str, Any]:
        body = self.clients[upstream].prepare(
            call.body, call.waiting.priority if call.waiting else 0.0
        )
        if stream:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True  # always, to record usage; stripped if not asked for
            body["stream_options"] = opts
        return body

    async def _retry_elsewhere(self, call: _Call, upstream: str, why: str) -> str | None:
        """After a failure before the first byte: mark the upstream down and queue the call
        once more, first in line; the new upstream, or None if there is none."""
        self.metrics.upstream_errors.labels(upstream, why).inc()
        self._grant(self.dispatcher.set_health(upstream, False))
        asyncio.get_running_loop().create_task(self._recover(upstream))
        self._release(call, upstream)
        if call.retried or not any(
            self.dispatcher.busy(u.name) < u.concurrency
            for u in self.dispatcher.upstreams
            if u.name != upstream and call.model in u.models
        ):
            return None
        call.retried = True
        call.future = asyncio.get_running_loop().create_future()
        self._enqueue(call, float("-inf"))
        return await call.future

    async def _recover(self, upstream: str) -> None:
        client = self.clients[upstream]
        while not self._draining:
            await asyncio.sleep(1.0)
            if await client.healthy():
                self._grant(self.dispatcher.set_health(upstream, True))
                return

    async def _unary(self, call: _Call, upstream: str | None, path: str) -> Response:
        while upstream is not None:
            client = self.clients[upstream]
            try:
                async with client.session.post(
                    client.url + path, json=self._upstream_body(call, upstream, False)
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
            except TimeoutError:
                self.metrics.upstream_errors.labels(upstream, "timeout").inc()
                self._release(call, upstream)
                self._end_call(call, 0, 0)
                return ApiError(
                    504, f"upstream {upstream!r} timed out", "upstream_timeout"
                ).response()
            except aiohttp.ClientError as e:
                upstream = await self._retry_elsewhere(call, upstream, "connect")
                if upstream is None:
                    self._end_call(call, 0, 0)
                    return ApiError(502, f"upstream unavailable: {e}", "upstream_error").response()
                continue
            self._release(call, upstream)
            usage: dict[str, Any] = {}
            if status == 200:
                with contextlib.suppress(ValueError, AttributeError):
                    usage = json.loads(raw).get("usage") or {}
            else:
                self.metrics.upstream_errors.labels(upstream, f"http_{status}").inc()
            self._account(call, usage)
            return Response(
                raw, status_code=status if status < 500 else 502, media_type="application/json"
            )
        raise AssertionError("unreachable")

    def _account(self, call: _Call, usage: dict[str, Any]) -> None:
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        self.metrics.prompt_tokens.inc(prompt)
        self.metrics.generation_tokens.inc(completion)
        self.metrics.e2e.observe(self.clock() - call.arrived_s)
        self.metrics.requests.labels("stop" if completion else "error").inc()
        self._end_call(call, prompt or call.ticket.info.prompt_tokens, completion)

    async def _stream(self, call: _Call, upstream: str, path: str) -> AsyncIterator[bytes]:
        wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        usage: dict[str, Any] = {}
        chunks = 0
        started = False
        current: str | None = upstream
        try:
            while current is not None:
                client = self.clients[current]
                try:
                    async with client.session.post(
                        client.url + path, json=self._upstream_body(call, current, True)
                    ) as resp:
                        if resp.status != 200:
                            raw = await resp.read()
                            self.metrics.upstream_errors.labels(
                                current, f"http_{resp.status}"
                            ).inc()
                            yield _sse_error(resp.status, raw.decode("utf-8", "replace")[:500])
                            return
                        buffer = b""
                        async for piece in resp.content.iter_any():
                            buffer += piece
                            while b"\n\n" in buffer:
                                event, buffer = buffer.split(b"\n\n", 1)
                                u = _usage_of(event)
                                if u is not None:
                                    usage = u
                                    if not wants_usage and _is_usage_only(event):
                                        continue
                                if not started:
                                    started = True
                                    self.metrics.ttft.observe(self.clock() - call.arrived_s)
                                chunks += 1
                                yield event + b"\n\n"
                        if buffer.strip():
                            yield buffer
                        return
                except TimeoutError:
                    self.metrics.upstream_errors.labels(current, "timeout").inc()
                    yield _sse_error(504, f"upstream {current!r} timed out")
                    return
                except aiohttp.ClientError as e:
                    if started:
                        self.metrics.upstream_errors.labels(current, "midstream").inc()
                        yield _sse_error(502, f"upstream failed mid-stream: {e}")
                        return
                    nxt = await self._retry_elsewhere(call, current, "connect")
                    current = nxt
                    if nxt is None:
                        yield _sse_error(502, f"upstream unavailable: {e}")
                        return
        finally:
            if current is not None:
                self._release(call, current)
            if not usage:
                usage = {
                    "prompt_tokens": call.ticket.info.prompt_tokens,
                    "completion_tokens": max(0, chunks - 1),
                }
            self._account(call, usage)


def _usage_of(event: bytes) -> dict[str, Any] | None:
    if not event.startswith(b"data: {") or b'"usage"' not in event:
        return None
    try:
        u = json.loads(event[6:]).get("usage")
    except (ValueError, AttributeError):
        return None
    return u if isinstance(u, dict) else None


def _is_usage_only(event: bytes) -> bool:
    try:
        return not json.loads(event[6:]).get("choices")
    except (ValueError, AttributeError):
        return False


def _sse_error(status: int, message: str) -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "code": status}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
