"""The gateway: an OpenAI-compatible endpoint that queues calls in policy order in front of
upstream engines, and learns applications' demand as they run.

The policy object is the simulator's: `make_policy(config.policy, ctx)`. A call's rank comes
from its application's view (`AppTracker`), waits in the `Dispatcher` until an upstream slot is
free, and travels upstream as the engine's request priority where the engine has one.

Every accepted call ends in a response or an explicit error: 400/401/404/413/429 before it
queues, 502/504 when its upstream fails before the first byte (after one retry on another
replica), the upstream's own 4xx as it is, and an SSE `error` event when the failure comes
mid-stream. A client that hangs up cancels its call, queued or upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hermes.core.demand_cost import DemandCost
from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.gateway.apps import AppTracker, CallTicket, GatewayApp
from hermes.gateway.config import GatewayConfig
from hermes.gateway.context import HeaderError, event_context, parse_context
from hermes.gateway.dispatch import Dispatcher, Grant, QueueFullError, Upstream, Waiting
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.model_swaps import PERIOD_S as SWAP_PERIOD_S
from hermes.gateway.model_swaps import ModelSwapper
from hermes.gateway.prewarm import PrewarmActuator
from hermes.gateway.run_store import RunStore
from hermes.gateway.upstream import UpstreamClient
from hermes.policies.base import Policy, PolicyContext
from hermes.policies.prewarm import NoPrewarm, PrewarmPolicy
from hermes.policies.registry import make_policy
from hermes.policies.slo_class import engine_rank

Clock = Callable[[], float]
_JSON_BODY = {"Content-Type": "application/json"}


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
    raw: bytes = b""  # the body as it came, sent on with fields appended (not re-encoded)
    upstream: str | None = None  # whose slot the call holds, from its grant to its release
    # A relayed stream's progress, for its accounting when it closes.
    usage: dict[str, Any] | None = None
    chunks: int = 0
    finish: str = "abort"  # until the stream ends otherwise: the client hung up
    ended: bool = False  # counted, and what it held freed: see `_account`
    rt: bool = False  # real-time: x-hermes-slo-class rt, or its model's default class
    deadline_s: float = math.inf  # arrival + its class's slo_s, or its app's deadline


class Gateway:
    """The gateway's state and its HTTP handlers; `app` is the ASGI application."""

    def __init__(
        self,
        config: GatewayConfig,
        policy: Policy | None = None,
        clock: Clock = time.monotonic,
        on_run: Callable[[AppRun], None] | None = None,
        cost: DemandCost | None = None,
        prewarm: PrewarmPolicy | None = None,
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
            slo=config.slo_class_options(),
        )
        self.prewarm = PrewarmActuator(
            config, prewarm or NoPrewarm(), self.clients, clock, self.metrics
        )
        self.swapper: ModelSwapper | None = None
        if config.gpu_groups:
            self.swapper = ModelSwapper(
                config,
                self.dispatcher,
                self.clients,
                self.metrics.registry,
                clock,
                self._grant,
                self._deadline_of,
                self._fail_waiting,
            )
        self.graphs: dict[str, PDGraph] = {}  # what the policy learned, for inspection
        self.store: RunStore | None = None
        self._calls: dict[int, _Call] = {}  # by id(Waiting)
        self._tasks: list[asyncio.Task[None]] = []
        self._recovering: dict[str, asyncio.Task[None]] = {}  # health polls of failed upstreams
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
        await self.prewarm.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self._every(self.config.policy_options.rank_interval_s, self._rerank))
        )
        if self.swapper is not None:
            await self.swapper.start()
            self._tasks.append(loop.create_task(self._every(SWAP_PERIOD_S, self.swapper.tick)))
        self._tasks.append(loop.create_task(self._every(1.0, self._reap_idle_apps)))

    async def drain(self, drain_s: float = 30.0) -> None:
        """Refuse new calls with 503 (and /healthz says draining) and wait up to `drain_s` for
        those queued or in flight to end. Call it before the HTTP server stops listening, so
        that clients and load balancers see 503s rather than refused connections."""
        self._draining = True
        deadline = self.clock() + drain_s
        while (self.dispatcher.running or self.dispatcher.queued) and self.clock() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self, drain_s: float = 30.0) -> None:
        """Drain, then close."""
        await self.drain(drain_s)
        tasks = [*self._tasks, *self._recovering.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.swapper is not None:
            await self.swapper.close()
        await self.prewarm.close()
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
        # One batched round over the applications with calls waiting, as the simulator ranks:
        # with 10,000 calls queued as cheap as call by call (~17 ms) when no rank moved, 4x
        # cheaper when all did (benchmarks/gateway_ranking.py). A call's key is its ticket.
        apps = dict.fromkeys(cast(CallTicket, w.key).app for w in self.dispatcher.waiting())
        ranks = self.policy.rank_apps([a.view for a in apps], now)
        if ranks is not None:
            by_app = dict(zip(apps, ranks, strict=True))

            def rank(w: Waiting) -> float:
                return by_app[cast(CallTicket, w.key).app]

        else:

            def rank(w: Waiting) -> float:
                t = self._calls[id(w)].ticket
                return self.policy.priority(t.info, t.app.view, now)

        self.dispatcher.rerank(rank)

    def _reap_idle_apps(self) -> None:
        now = self.clock()
        for app in self.tracker.idle(now, self.config.app_idle_timeout_s):
            self._finish_app(app, now)
        self.metrics.apps_active.set(len(self.tracker.apps))
        if self.prewarm.active:
            self.prewarm.on_idle(now, lambda u: self.dispatcher.busy(u) > 0)

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
        return (await self._json_raw(request))[1]

    async def _json_raw(self, request: Request) -> tuple[bytes, Any]:
        """The body's bytes and their JSON value."""
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
        raw = b"".join(chunks)
        try:
            return raw, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from None

    def _grant(self, grants: list[Grant]) -> None:
        for g in grants:
            call = self._calls.get(id(g.call))
            if call is not None:
                call.upstream = g.upstream
                if not call.future.done():  # done: cancelled, its handler gone; see `_free`
                    call.future.set_result(g.upstream)
        self.metrics.waiting.set(self.dispatcher.queued)
        self.metrics.running.set(self.dispatcher.running)

    def _enqueue(self, call: _Call, priority: float) -> None:
        try:
            waiting, grants = self.dispatcher.submit(call.ticket, call.model, priority, call.rt)
        except QueueFullError:
            raise ApiError(
                429, "the gateway's queue is full; retry later", "rate_limit_error"
            ) from None
        call.waiting = waiting
        self._calls[id(waiting)] = call
        self._grant(grants)
        if self.swapper is not None and not waiting.granted:
            self.swapper.on_queued(call.model)

    def _deadline_of(self, waiting: Waiting) -> float:
        call = self._calls.get(id(waiting))
        return call.deadline_s if call is not None else self.clock() + self.config.slo_seconds("be")

    def _fail_waiting(self, model: str, message: str) -> int:
        """End every call waiting for `model` with 503 (`message`); how many there were."""
        failed = 0
        for w in list(self.dispatcher.waiting()):
            if w.model != model or not self.dispatcher.cancel(w):
                continue
            call = self._calls.pop(id(w), None)
            if call is not None and not call.future.done():
                call.future.set_exception(ApiError(503, message, "unavailable"))
                failed += 1
        self._grant([])
        return failed

    def _release(self, call: _Call, upstream: str) -> None:
        call.upstream = None
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
            index = body.get("stage_index")
            if index is not None and (type(index) is not int or index < 0):
                raise ApiError(400, f"'stage_index' must be a non-negative integer, got {index!r}")
            app = self.tracker.apps.get(request.path_params["app_id"])
            now = self.clock()
            if app is None:
                ctx = event_context(request.path_params["app_id"], body)
                app, _ = self.tracker.app_for(ctx, now)
                self.policy.on_arrival(app.view, now)
            if kind == "stage_started":
                backend = body.get("backend", stage)
                if not isinstance(backend, str) or not backend:
                    raise ApiError(400, "'backend' must be a non-empty string")
                self.tracker.tool_started(app, stage, backend, now, index)
                self.prewarm.on_tool_started(backend, now)
                self.prewarm.on_stage(app, now)
            else:
                current = app.current
                if not self.tracker.tool_finished(app, stage, now, index):
                    raise ApiError(
                        409, f"tool stage {stage!r} is not in progress for this application"
                    )
                assert current is not None  # a tool stage was in progress
                self.prewarm.on_tool_finished(app, stage, current.backend, now)
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
            raw, body = await self._json_raw(request)
            body = _check_body(body, chat)
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
        prompt = estimate_prompt_tokens(body)
        stages = len(app.stages)
        ticket = self.tracker.start_call(
            app, ctx.stage, prompt, now, ctx.stage_index, body["model"]
        )
        if len(app.stages) != stages:
            self.prewarm.on_stage(app, now)
        slo = self.config.slo_class_of(body["model"], ctx.slo_class)
        deadline = now + self.config.slo_seconds(slo)
        if app.view.deadline_s is not None:
            deadline = min(deadline, app.view.deadline_s)
        call = _Call(ticket, body["model"], body, now, raw=raw, rt=slo == "rt", deadline_s=deadline)
        try:
            self._enqueue(call, self.policy.priority(ticket.info, app.view, now))
        except ApiError as e:
            self._end_call(call, 0, 0)
            self.metrics.rejections.labels(str(e.status)).inc()
            return e.response({"Retry-After": "1"})
        try:
            upstream = await self._wait_turn(request, call)
        except ApiError as e:  # it waited for a model that could not be swapped in
            self._account(call, {}, "error")
            return e.response()
        if upstream is None:  # the client went away while queued
            self._account(call, {}, "abort")
            return Response(status_code=499)
        self.metrics.queue_time.observe(self.clock() - now)
        answer = await _unless_disconnected(request, self._answer(call, upstream, path))
        return Response(status_code=499) if answer is None else answer

    async def _wait_turn(self, request: Request, call: _Call) -> str | None:
        if call.future.done():
            return call.future.result()
        watch: asyncio.Future[None] = asyncio.ensure_future(_until_disconnect(request))
        waiters: set[asyncio.Future[Any]] = {call.future, watch}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if call.future.done():
            return call.future.result()
        self._free(call)
        return None

    def _free(self, call: _Call) -> None:
        """Give back what the call holds, wherever it ended: its slot, or its queue place."""
        if call.upstream is not None:
            self._release(call, call.upstream)
        elif call.waiting is not None and self.dispatcher.cancel(call.waiting):
            self._calls.pop(id(call.waiting), None)
            self._grant([])

    def _end_call(self, call: _Call, prompt: int, completion: int) -> None:
        now = self.clock()
        t = call.ticket
        self.tracker.end_call(t, prompt, completion, now)
        if t.app.ephemeral and t.app.in_flight == 0:
            self._finish_app(t.app, now)

    def _upstream_body(self, call: _Call, upstream: str, stream: bool) -> bytes:
        extra = {}
        if stream:  # usage always, to record it; stripped if not asked for
            opts = call.body.get("stream_options") or {}
            extra["stream_options"] = {**opts, "include_usage": True}
        rank = call.waiting.priority if call.waiting else 0.0
        rank = engine_rank(rank, "rt" if call.rt else "be", self.dispatcher.slo)
        return self.clients[upstream].prepare(call.raw, call.body, rank, extra)

    async def _retry_elsewhere(self, call: _Call, upstream: str, why: str) -> str | None:
        """After a failure before the first byte: mark the upstream down and queue the call
        once more, first in line; the new upstream, or None if there is none."""
        self.metrics.upstream_errors.labels(upstream, why).inc()
        self._grant(self.dispatcher.set_health(upstream, False))
        if upstream not in self._recovering:
            loop = asyncio.get_running_loop()
            self._recovering[upstream] = loop.create_task(self._recover(upstream))
        self._release(call, upstream)
        # Another healthy replica will do, busy or not: the call waits for it, first in line.
        if call.retried or not any(
            self.dispatcher.healthy(u.name)
            for u in self.dispatcher.upstreams
            if u.name != upstream and call.model in u.models
        ):
            return None
        call.retried = True
        call.future = asyncio.get_running_loop().create_future()
        try:
            self._enqueue(call, float("-inf"))
        except ApiError:  # the queue is full
            return None
        return await call.future

    async def _recover(self, upstream: str) -> None:
        client = self.clients[upstream]
        try:
            while not self._draining:
                await asyncio.sleep(1.0)
                if await client.healthy():
                    self._grant(self.dispatcher.set_health(upstream, True))
                    return
        finally:
            self._recovering.pop(upstream, None)

    async def _answer(self, call: _Call, upstream: str, path: str) -> Response:
        """The upstream's answer, or an explicit error: an HTTP status until the upstream's
        headers (a failed connection retried once elsewhere), an SSE error event once a
        stream has begun. Cancelled when the client hangs up."""
        stream = bool(call.body.get("stream"))
        try:
            upstream, resp = await self._open(call, upstream, path, stream)
            if stream and resp.status == 200:
                first = await self._first(upstream, resp)
                events = self._relay(call, upstream, resp, first)
                return _Relay(events, lambda: self._relayed(call, resp))
            return await self._whole(call, upstream, resp)
        except ApiError as e:
            self._account(call, {}, "error")
            return e.response()
        except asyncio.CancelledError:
            self._account(call, {}, "abort")
            raise
        except Exception:  # a bug: Starlette answers 500; the call is freed all the same
            self._account(call, {}, "error")
            raise

    async def _open(
        self, call: _Call, upstream: str, path: str, stream: bool
    ) -> tuple[str, aiohttp.ClientResponse]:
        """The upstream and its response, headers read. Before them nothing has reached the
        client, so a refused, dropped or timed-out connection is retried on another replica."""
        while True:
            client = self.clients[upstream]
            if self.prewarm.active and not await self.prewarm.ready(upstream, call.model):
                nxt = await self._retry_elsewhere(call, upstream, "prewarm")
                if nxt is None:
                    raise ApiError(
                        502,
                        f"upstream {upstream!r} could not be woken or load {call.model!r}",
                        "upstream_error",
                    )
                upstream = nxt
                continue
            try:
                body = self._upstream_body(call, upstream, stream)
                return upstream, await client.session.post(
                    client.url + path, data=body, headers=_JSON_BODY
                )
            except aiohttp.ConnectionTimeoutError as e:  # a TimeoutError, but retried
                error: aiohttp.ClientError = e
            except TimeoutError:
                self.metrics.upstream_errors.labels(upstream, "timeout").inc()
                raise ApiError(
                    504, f"upstream {upstream!r} timed out", "upstream_timeout"
                ) from None
            except aiohttp.ClientError as e:
                error = e
            nxt = await self._retry_elsewhere(call, upstream, "connect")
            if nxt is None:
                raise ApiError(502, f"upstream unavailable: {error}", "upstream_error")
            upstream = nxt

    async def _whole(self, call: _Call, upstream: str, resp: aiohttp.ClientResponse) -> Response:
        """The upstream's answer in one piece: a 4xx as it is (the caller's to fix, e.g. a
        prompt too long), a 5xx as 502. Not retried: the upstream had begun to answer."""
        try:
            raw = await resp.read()
        except TimeoutError:
            self.metrics.upstream_errors.labels(upstream, "timeout").inc()
            raise ApiError(504, f"upstream {upstream!r} timed out", "upstream_timeout") from None
        except aiohttp.ClientError as e:
            self.metrics.upstream_errors.labels(upstream, "midstream").inc()
            raise ApiError(502, f"upstream failed mid-answer: {e}", "upstream_error") from None
        finally:
            resp.release()  # read through: back to the pool; cut off: closed
        status = resp.status
        if status != 200:
            self.metrics.upstream_errors.labels(upstream, f"http_{status}").inc()
        if status >= 500:
            text = raw.decode("utf-8", "replace")[:300]
            raise ApiError(
                502, f"upstream {upstream!r} answered {status}: {text}", "upstream_error"
            )
        usage: dict[str, Any] = {}
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                u = json.loads(raw).get("usage")
                usage = u if isinstance(u, dict) else {}
        self._account(call, usage, "stop" if status == 200 else "error")
        return Response(raw, status_code=status, media_type="application/json")

    async def _first(self, upstream: str, resp: aiohttp.ClientResponse) -> bytes:
        """A stream's first bytes, read before the client gets its 200: a failure until then is
        still an HTTP error. Reading from the headers on also keeps what came with a failure:
        aiohttp raises a failure set while no read was waiting before the data it buffered."""
        try:
            first = await resp.content.readany()
        except asyncio.CancelledError:
            resp.release()  # closed: the upstream stops
            raise
        except TimeoutError:
            error = ApiError(504, f"upstream {upstream!r} timed out", "upstream_timeout")
            kind = "timeout"
        except aiohttp.ClientError as e:
            error = ApiError(502, f"upstream failed before its first event: {e}", "upstream_error")
            kind = "midstream"
        else:
            if first:
                return first
            error = ApiError(502, f"upstream {upstream!r} sent an empty stream", "upstream_error")
            kind = "empty"
        resp.release()
        self.metrics.upstream_errors.labels(upstream, kind).inc()
        raise error

    def _account(self, call: _Call, usage: dict[str, Any], finish: str) -> None:
        """The call is over: free what it holds and count it, once, by how it finished."""
        if call.ended:
            return
        call.ended = True
        upstream = call.upstream
        self._free(call)
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        if self.swapper is not None:
            cls = "rt" if call.rt else "be"
            self.swapper.on_ended(upstream, call.model, cls, completion, finish == "stop")
        self.metrics.prompt_tokens.inc(prompt)
        self.metrics.generation_tokens.inc(completion)
        self.metrics.e2e.observe(self.clock() - call.arrived_s)
        self.metrics.requests.labels(finish).inc()
        self._end_call(call, prompt or call.ticket.info.prompt_tokens, completion)

    async def _relay(
        self, call: _Call, upstream: str, resp: aiohttp.ClientResponse, first: bytes
    ) -> AsyncGenerator[bytes, None]:
        """The upstream's events as they come, its usage-only event dropped unless asked for;
        a failure becomes an SSE error event, the client having had its 200."""
        wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        try:
            buffer = b""
            piece = first
            while piece:  # b"": the end of the stream
                buffer += piece
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    u = _usage_of(event)
                    if u is not None:
                        call.usage = u
                        if not wants_usage and _is_usage_only(event):
                            continue
                    if not call.chunks:
                        self.metrics.ttft.observe(self.clock() - call.arrived_s)
                    call.chunks += 1
                    yield event + b"\n\n"
                piece = await resp.content.readany()
            if buffer.strip():
                yield buffer
            call.finish = "stop"
        except TimeoutError:
            self.metrics.upstream_errors.labels(upstream, "timeout").inc()
            call.finish = "error"
            yield _sse_error(504, f"upstream {upstream!r} timed out")
        except aiohttp.ClientError as e:
            self.metrics.upstream_errors.labels(upstream, "midstream").inc()
            call.finish = "error"
            yield _sse_error(502, f"upstream failed mid-stream: {e}")
        finally:
            # Here, before Starlette's last send, so that a client holding its whole answer
            # finds the call ended; `_Relay` ends the streams that never got here.
            self._relayed(call, resp)

    def _relayed(self, call: _Call, resp: aiohttp.ClientResponse) -> None:
        resp.release()  # cut off (the client hung up): closed, and the upstream stops
        usage = call.usage or {
            "prompt_tokens": call.ticket.info.prompt_tokens,
            "completion_tokens": max(0, call.chunks - 1),
        }
        self._account(call, usage, call.finish)


class _Relay(StreamingResponse):
    """An event stream relayed from upstream that closes its body iterator and runs `on_close`
    however it ends: when the client hangs up, Starlette cancels the stream, leaving an
    iterator cut off at a `yield` to the garbage collector, and never starting one whose
    client left before the first chunk."""

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._events.aclose()
            finally:
                self._on_close()


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(
    request: Request, work: Coroutine[Any, Any, Response]
) -> Response | None:
    """`work`'s response, or None if the client hangs up first: `work` is cancelled then, and
    with it the upstream call (Starlette notices a disconnect by itself only while streaming)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
    # A response done before the cancel took effect is still sent: sending it frees it.
    return None if task.cancelled() else task.result()


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
