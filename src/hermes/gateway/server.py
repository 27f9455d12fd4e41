"""The gateway: an OpenAI-compatible endpoint that queues calls in policy order in front of
upstream engines, and learns applications' demand as they run.

The policy object is the simulator's: `make_policy(config.policy, ctx)`. A call's rank comes
from its application's view (`AppTracker`), waits in the `Dispatcher` until an upstream slot is
free (`calls`), and travels upstream as the engine's request priority where the engine has one
(`forwarding`, `relay`). Handlers read parse -> call -> respond: they raise the gateway's
errors, which one table answers (`errors`); draining, bearer tokens and body limits are
middleware (`middleware`). Which error a client gets when: docs/gateway.md, section 7.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hermes.core.demand_cost import DemandCost
from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.gateway.admission_feed import AdmissionFeed
from hermes.gateway.affinity import SlotAffinity, router_for
from hermes.gateway.apps import AppLimits, AppTracker, CallTicket, GatewayApp
from hermes.gateway.calls import Call, CallLifecycle
from hermes.gateway.config import GatewayConfig
from hermes.gateway.context import CallContext, event_context, parse_context
from hermes.gateway.dashboard import dashboard_routes
from hermes.gateway.dispatch import Dispatcher, Upstream, Waiting
from hermes.gateway.errors import (
    ApiError,
    ConflictError,
    NotFoundError,
    StoreBehindError,
    exception_handlers,
)
from hermes.gateway.finishing import AppFinisher
from hermes.gateway.forwarding import Forwarder
from hermes.gateway.health import UpstreamHealth
from hermes.gateway.logs import set_upstream
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.middleware import BearerAuth, BodyLimit, Draining
from hermes.gateway.model_swaps import PERIOD_S as SWAP_PERIOD_S
from hermes.gateway.model_swaps import ModelSwapper
from hermes.gateway.outbox import RunOutbox
from hermes.gateway.prewarm import PrewarmActuator
from hermes.gateway.relay import unless_disconnected
from hermes.gateway.request_bodies import (
    check_completion,
    check_event,
    estimate_prompt_tokens,
    read_json,
)
from hermes.gateway.run_store import RunStore
from hermes.gateway.slow_clients import BodyDeadline, slow_client_counter
from hermes.gateway.state_api import StateApi
from hermes.gateway.supervise import every
from hermes.gateway.tenants import Keyring, caller_of
from hermes.gateway.tool_admission import ToolAdmission
from hermes.gateway.upstream import upstream_clients
from hermes.policies.aging import Aging
from hermes.policies.base import Policy, PolicyContext
from hermes.policies.prewarm import NoPrewarm, PrewarmPolicy
from hermes.policies.registry import make_policy
from hermes.types import Clock

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
_QUEUED = "hermes_queued"  # request.state: the call got a place in the queue


class Gateway:
    """The gateway's state and its HTTP handlers; `app` is the ASGI application."""

    # False: every round re-ranks every waiting call (the reference the tests compare to).
    incremental_ranks = True

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
        limits = AppLimits(config.max_apps, config.max_app_types, config.max_calls_per_app)
        self.tracker = AppTracker(cost, limits)
        self.metrics = GatewayMetrics()
        self.slow_clients = slow_client_counter(self.metrics.registry)
        self.finisher = AppFinisher(self.tracker, self.policy, self.metrics, on_run)
        self.reap_period_s = 1.0
        self.clients = upstream_clients(config)
        slo = config.slo_class_options()
        # Each upstream's limit: fixed, or found by its admission controller (`auto`).
        self.admission = AdmissionFeed(config.backends, self.clients, self.metrics.registry, clock)
        lim = self.admission.limit
        self.dispatcher = Dispatcher(
            [Upstream(b.name, frozenset(b.models), lim(b.name)) for b in config.backends],
            limit=config.queue_limit,
            slo=slo,
            aging=Aging(config.aging_max_wait_s),
            router=router_for(config.backends, config.session_max_excess),
        )
        d = self.dispatcher
        self.metrics.count_in_flight(lambda: [(u.name, d.busy(u.name)) for u in d.upstreams])
        self.calls = CallLifecycle(
            self.dispatcher,
            self.clients,
            self.tracker,
            self.metrics,
            clock,
            self._finish_app,
            config.slo_seconds("be"),
            config.queue_timeout_s,
        )
        self.calls.admission = self.admission
        self.admission.attach(self.dispatcher, self.calls.grant)
        self.health = self.calls.health = UpstreamHealth(
            config.health_check,
            self.clients,
            self.dispatcher,
            self.calls.grant,
            self.metrics.registry,
            clock,
        )
        self.prewarm = PrewarmActuator(
            config, prewarm or NoPrewarm(), self.clients, clock, self.metrics
        )
        self.swapper: ModelSwapper | None = None
        if config.gpu_groups:
            self.swapper = self.calls.swapper = ModelSwapper(
                config,
                self.dispatcher,
                self.clients,
                self.metrics.registry,
                clock,
                self.calls.grant,
                self.calls.deadline_of,
                self.calls.fail_waiting,
            )
        self.forwarder = Forwarder(self.calls, self.clients, self.prewarm, self.metrics, clock, slo)
        self.forwarder.cache_fields = SlotAffinity(config.backends).fields  # llama.cpp slots
        # Capacity-managed tool backends: their stages wait for a grant in policy order.
        self.tools = ToolAdmission(config.tools, self.policy, clock, self.metrics.registry)
        self.graphs: dict[str, PDGraph] = {}  # what the policy learned, for inspection
        self.store: RunStore | None = None
        self.outbox: RunOutbox | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        self.state_api = StateApi(self)  # /v1/hermes/state, which /dashboard draws
        self.app = self._routes()

    def use_store(self, store: RunStore) -> None:
        """Keep finished runs in `store`, written off the event loop (`outbox`)."""
        self.store = store
        self.outbox = RunOutbox(store, self.metrics, self.config.run_store_pending_limit)
        self.finisher.outbox = self.outbox

    def _routes(self) -> Starlette:
        c = self.config
        keys = Keyring(c.api_keys, c.api_key, c.admin_key, c.metrics_public)
        api = Middleware(BearerAuth, keys=keys, route="calls")
        admin = Middleware(BearerAuth, keys=keys, route="apps")
        limit = Middleware(BodyLimit, limit=c.max_body_bytes)
        late = self.slow_clients.labels("body").inc
        slow = Middleware(BodyDeadline, timeout_s=c.client_body_timeout_s, on_timeout=late)
        call = [Middleware(Draining, draining=lambda: self._draining), api, limit, slow]
        return Starlette(
            routes=[
                Route(CHAT, self.chat, methods=["POST"], middleware=call),
                Route(COMPLETIONS, self.completions, methods=["POST"], middleware=call),
                Route("/v1/models", self.models, methods=["GET"], middleware=[api]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"], middleware=[api]),
                Route("/healthz", self.healthz, methods=["GET"]),
                *dashboard_routes(
                    self.state_api.handle, Middleware(BearerAuth, keys=keys, route="admin")
                ),
                Route(
                    "/metrics",
                    self.prometheus,
                    methods=["GET"],
                    middleware=[Middleware(BearerAuth, keys=keys, route="metrics")],
                ),
                Route(  # app ids may hold '/', and a tenant's always do
                    "/v1/apps/{app_id:path}/events",
                    self.app_event,
                    methods=["POST"],
                    middleware=[admin, limit, slow],
                ),
                Route(
                    "/v1/apps/{app_id:path}/grants/{grant_id}",
                    self.tools.poll,
                    methods=["GET"],
                    middleware=[admin],
                ),
                Route(
                    "/v1/apps/{app_id:path}/finish",
                    self.app_finish,
                    methods=["POST"],
                    middleware=[admin],
                ),
            ],
            exception_handlers=exception_handlers(on_refused=self._count_rejection),
            lifespan=self._lifespan,
        )

    def _count_rejection(self, request: Request, status: int) -> None:
        """A completion call refused before it queued counts as a rejection, by status."""
        if request.url.path in (CHAT, COMPLETIONS) and not getattr(request.state, _QUEUED, False):
            self.metrics.rejections.labels(str(status)).inc()

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
        fails = self.metrics.task_failures
        rank_s = self.config.policy_options.rank_interval_s
        self._tasks.append(loop.create_task(every("rerank", rank_s, self.rerank, fails)))
        if self.swapper is not None:
            await self.swapper.start()
            swaps = every("model_swaps", SWAP_PERIOD_S, self.swapper.tick, fails)
            self._tasks.append(loop.create_task(swaps))
        reap = every("reap_idle_apps", lambda: self.reap_period_s, self._reap_idle_apps, fails)
        self._tasks.append(loop.create_task(reap))
        if self.config.aging_max_wait_s is not None:
            age_s = min(1.0, self.config.aging_max_wait_s / 4)
            self._tasks.append(loop.create_task(every("aging", age_s, self.calls.age, fails)))
        self.health.start()
        self.admission.start(fails)
        if self.outbox is not None:
            self.outbox.start()

    async def drain(self, drain_s: float = 30.0) -> None:
        """Refuse new calls with 503 (and /healthz says draining) and wait up to `drain_s` for
        those queued or in flight to end. Call it before the HTTP server stops listening, so
        that clients and load balancers see 503s rather than refused connections."""
        self._draining = self.calls.stopping = True
        deadline = self.clock() + drain_s
        while (self.dispatcher.running or self.dispatcher.queued) and self.clock() < deadline:
            # A call for a model without a healthy upstream would hold the shutdown up.
            for model in self.health.unavailable():
                self.calls.fail_waiting(model, f"the gateway is shutting down; {model!r} is down")
            await asyncio.sleep(0.05)
        self.calls.fail_waiting(None, "the gateway is shutting down")
        self.tools.close()

    async def stop(self, drain_s: float = 30.0) -> None:
        """Drain, then close."""
        await self.drain(drain_s)
        await self.health.close()
        await self.admission.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        # What is still in progress is kept, unfinished, and the store gets what waits.
        self.finisher.store_unfinished()
        if self.outbox is not None:
            await self.outbox.close()
        if self.swapper is not None:
            await self.swapper.close()
        await self.prewarm.close()
        for c in self.clients.values():
            await c.close()
        if self.store is not None:
            self.store.close()

    def rerank(self) -> None:
        """One ranking round over the calls waiting (dynamic policies): over the calls of the
        applications that changed since the last round where the policy ranks by views alone
        (`view_ranked`, and `incremental_ranks`), else over every call."""
        self.tools.rerank(self.clock())  # tool stages waiting for a grant, too
        changed = self.tracker.take_changed()
        if not self.policy.dynamic or not self.dispatcher.queued:
            return
        now = self.clock()

        # One batched round over the applications with calls waiting, as the simulator ranks:
        # with 10,000 calls queued as cheap as call by call (~17 ms) when no rank moved, 4x
        # cheaper when all did (benchmarks/gateway_ranking.py). A call's key is its ticket.
        # Whole lists, not a call per call: the round is most of the Ray actor's work.
        def ranks(calls: list[Waiting]) -> list[float]:
            tickets = cast(list[CallTicket], [w.key for w in calls])
            apps = dict.fromkeys([t.app for t in tickets])
            by_rank = self.policy.rank_apps([a.view for a in apps], now)
            if by_rank is None:  # a policy that ranks call by call
                return [self.policy.priority(t.info, t.app.view, now) for t in tickets]
            by_app = dict(zip(apps, by_rank, strict=True))
            return [by_app[t.app] for t in tickets]

        if self.incremental_ranks and self.policy.view_ranked:
            # An unchanged application's calls keep their ranks and heap entries: the round
            # costs what changed, not what waits (benchmarks/gateway_ranking.py).
            self.dispatcher.rerank_groups(changed, ranks)
        else:
            self.dispatcher.rerank_all(ranks)

    def _reap_idle_apps(self) -> None:
        now = self.clock()
        self.finisher.reap(now, self.config.app_idle_timeout_s)
        self.tools.sweep(self.tracker.apps, now)  # grants of ended applications go back
        if self.prewarm.active:
            self.prewarm.on_idle(now, lambda u: self.dispatcher.busy(u) > 0)

    def _finish_app(self, app: GatewayApp, now: float) -> None:
        self.finisher.finish(app, now)  # a plain call's app: nothing to store, never held

    # Handlers --------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._completion(request, CHAT, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._completion(request, COMPLETIONS, chat=False)

    async def models(self, request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "owned_by": "hermes"} for m in self.dispatcher.models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        """`GET /v1/models/{id}`, as OpenAI's clients retrieve one model."""
        name = request.path_params["model"]
        if name not in self.dispatcher.models():
            raise NotFoundError(f"model {name!r} is not served here; see /v1/models", "model")
        return JSONResponse({"id": name, "object": "model", "owned_by": "hermes"})

    def degraded(self) -> list[str]:
        """What is wrong while the gateway still serves (/healthz: degraded, 200)."""
        problems = []
        if self.outbox is not None and (store := self.outbox.problem()) is not None:
            problems.append(store)
        for model in sorted(self.health.unavailable()):
            problems.append(f"no healthy upstream serves model {model!r}")
        return problems

    async def healthz(self, request: Request) -> Response:
        problems = self.degraded()
        status = "draining" if self._draining else "degraded" if problems else "ok"
        body = {
            "status": status,
            "queued": self.dispatcher.queued,
            "running": self.dispatcher.running,
            "apps": len(self.tracker.apps),
            "problems": problems,
            "upstreams": {u: "up" if self.dispatcher.healthy(u) else "down" for u in self.clients},
            "unavailable_models": sorted(self.health.unavailable()),
        }
        if self.outbox is not None:
            body["run_store_pending"] = self.outbox.pending
        return JSONResponse(body, status_code=503 if self._draining else 200)

    async def prometheus(self, request: Request) -> Response:
        # Rendered in a thread: the labels are bounded, but a scrape still should not hold
        # the event loop for its whole length.
        text = await asyncio.to_thread(self.metrics.render)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def app_event(self, request: Request) -> Response:
        _, body = await read_json(request)
        event = check_event(body)
        # Everything checked before an application is made: its id, type, deadline, class.
        ctx = event_context(request.path_params["app_id"], body)
        ctx = caller_of(request).admit(ctx, ctx.slo_class)
        assert ctx.app_id is not None
        app = self.tracker.apps.get(ctx.app_id)
        now = self.clock()
        if app is None:
            if event.kind == "stage_finished":
                raise ConflictError(
                    f"tool stage {event.stage!r} is not in progress: no application in "
                    "progress has this id"
                )
            # Its first sight: the body may carry its type, deadline and class.
            app, _ = self.tracker.app_for(ctx, now)
            self.policy.on_arrival(app.view, now)
        if event.kind == "stage_started":
            self.tracker.tool_started(app, event.stage, event.backend, now, event.index)
            self.prewarm.on_tool_started(event.backend, now)
            self.prewarm.on_stage(app, now)
            self.tools.moved_on(app, now)
            if self.tools.manages(event.backend):  # run it when the policy gives a slot
                return await self.tools.stage_started(request, app, event.backend, body)
        else:
            current = app.current
            if not self.tracker.tool_finished(app, event.stage, now, event.index):
                raise ConflictError(
                    f"tool stage {event.stage!r} is not in progress for this application"
                )
            assert current is not None  # a tool stage was in progress
            self.prewarm.on_tool_finished(app, event.stage, current.backend, now)
            self.tools.stage_finished(app)
        return JSONResponse({"ok": True})

    async def app_finish(self, request: Request) -> Response:
        app_id = caller_of(request).app_id(request.path_params["app_id"])
        app = self.tracker.apps.get(app_id)
        if app is None:
            raise NotFoundError("no application in progress with this id")
        if app.in_flight:
            raise ConflictError(f"the application has {app.in_flight} calls in flight")
        if not self.finisher.finish(app, self.clock()):
            raise StoreBehindError(
                f"the run store is behind ({self.outbox.pending if self.outbox else 0} runs "
                "wait to be written); the application is kept, retry the finish later"
            )
        return JSONResponse({"ok": True})

    async def _completion(self, request: Request, path: str, chat: bool) -> Response:
        raw, body = await read_json(request)
        body = check_completion(body, chat)
        ctx = parse_context(request.headers)
        if not self.dispatcher.serves(body["model"]):
            raise NotFoundError(
                f"model {body['model']!r} is not served here; see /v1/models", "model"
            )
        slo = self.config.slo_class_of(body["model"], ctx.slo_class)
        caller = caller_of(request)
        ctx = caller.admit(ctx, slo)  # its key's limits; its app in its namespace
        call = self.admit(ctx, body["model"], estimate_prompt_tokens(body), body, raw)
        call.tenant = caller.name
        setattr(request.state, _QUEUED, True)
        try:
            upstream = await self.calls.wait_turn(request, call)
        except ApiError:  # it waited for a model that could not be swapped in
            self.calls.account(call, {}, "error")
            raise
        if upstream is None:  # the client went away while queued
            self.calls.account(call, {}, "abort")
            return Response(status_code=499)
        self.metrics.queue_time.observe(self.clock() - call.arrived_s)
        set_upstream(request.scope, upstream)  # for the access log
        answer = await unless_disconnected(request, self.forwarder.answer(call, upstream, path))
        return Response(status_code=499) if answer is None else answer

    def admit(
        self,
        ctx: CallContext,
        model: str,
        prompt: int,
        body: dict[str, Any] | None = None,
        raw: bytes = b"",
    ) -> Call:
        """The call (`prompt` tokens, about), started in its application and queued
        (RateLimitError if it cannot be). Without `body`: a call whose payload stays elsewhere
        (the Ray scheduler actor's, `hermes.ray_serve`)."""
        now = self.clock()
        app, created = self.tracker.app_for(ctx, now)
        if created:
            self.policy.on_arrival(app.view, now)
        stages = len(app.stages)
        ticket = self.tracker.start_call(app, ctx.stage, prompt, now, ctx.stage_index, model)
        self.tools.moved_on(app, now)  # an LLM stage: a tool grant it held goes back
        if len(app.stages) != stages:
            self.prewarm.on_stage(app, now)
        slo = self.config.slo_class_of(model, ctx.slo_class)
        deadline = now + self.config.slo_seconds(slo)
        if app.view.deadline_s is not None:
            deadline = min(deadline, app.view.deadline_s)
        body = {"model": model} if body is None else body
        call = Call(ticket, model, body, now, raw=raw, rt=slo == "rt", deadline_s=deadline)
        try:
            self.calls.enqueue(call, self.policy.priority(ticket.info, app.view, now))
        except ApiError:
            self.calls.end_call(call, 0, 0)
            raise
        return call
