"""An ingress replica: the OpenAI-compatible routes of the gateway, whose calls wait for the
scheduler's grant (`link`) and then go to the granted upstream from here, whole or streamed.
The body never leaves the replica except to its upstream.

The single-process gateway's pieces are reused: body and header checks, tenants and bearer
tokens, body limits, the error table, the upstream clients (priorities, timeouts) and the SSE
relay's response class. What a replica does not do (docs/ray.md): retry a call on another
upstream after a failed connection, and wait for a prewarm before forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hermes.gateway.config import GatewayConfig
from hermes.gateway.context import parse_context
from hermes.gateway.dashboard import home, page, static
from hermes.gateway.errors import (
    NotFoundError,
    UpstreamError,
    error_body,
    exception_handlers,
    sse_error,
)
from hermes.gateway.inference_headers import CallFacts
from hermes.gateway.middleware import BearerAuth, BodyLimit
from hermes.gateway.relay import (
    Relay,
    RelayedStream,
    unless_disconnected,
    until_disconnect,
)
from hermes.gateway.request_bodies import check_completion, estimate_prompt_tokens, read_json
from hermes.gateway.tenants import Keyring, caller_of
from hermes.gateway.upstream import UpstreamClient, late, upstream_clients
from hermes.ray_serve.link import Pending, RefusedError, SchedulerLink, SchedulerRemote
from hermes.ray_serve.protocol import Granted, Submit
from hermes.ray_serve.serve_upstream import HandleFor, ServeUpstreams
from hermes.types import Clock

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
REPLICA_HEADER = "x-hermes-replica"  # which replica answered (tests, debugging)


def replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Ingress:
    """One replica's routes, upstream clients and link to the scheduler; `app` is ASGI."""

    def __init__(
        self,
        config: GatewayConfig,
        remote: SchedulerRemote,
        replica: str | None = None,
        clock: Clock = time.monotonic,
        watch_disconnects: bool = True,
        serve_handles: HandleFor | None = None,
    ) -> None:
        """`serve_handles`: a Ray Serve deployment's handle by application and name, for the
        backends that are deployments (`serve://`; `serve_upstream`)."""
        self.config = config
        # Under Ray Serve a client's hang-up cancels its handler (Serve does it), and reading
        # `receive` for one costs a call to Serve's proxy: no watching there.
        self.watch_disconnects = watch_disconnects
        self.name = replica or replica_name()
        opts = config.ray
        self.link = SchedulerLink(remote, self.name, opts.poll_s, opts.scheduler_timeout_s, clock)
        self.clients = upstream_clients(config)
        self.deployments = ServeUpstreams(config, self.clients, serve_handles)
        self.served = {m for b in config.backends for m in b.models}
        keys = Keyring(config.api_keys, config.api_key, config.admin_key, config.metrics_public)
        call = [
            Middleware(BearerAuth, keys=keys, route="calls"),
            Middleware(BodyLimit, limit=config.max_body_bytes),
        ]
        self.app = Starlette(
            routes=[
                Route(CHAT, self.chat, methods=["POST"], middleware=call),
                Route(COMPLETIONS, self.completions, methods=["POST"], middleware=call),
                Route("/v1/models", self.models, methods=["GET"], middleware=call[:1]),
                Route("/healthz", self.healthz, methods=["GET"]),
                # The dashboard's page is static (as in the single-process gateway: open, its
                # own CSP); the state it polls is the scheduler's, below.
                Route("/", home, methods=["GET"]),
                Route("/dashboard", page, methods=["GET"]),
                Route("/dashboard/{name}", static, methods=["GET"]),
                # The scheduler's own: application events, finishes and tool grants, metrics,
                # the dashboard's state (its routes check the bearer tokens themselves).
                Route("/v1/apps/{rest:path}", self.to_scheduler, methods=["GET", "POST"]),
                Route("/metrics", self.to_scheduler, methods=["GET"]),
                Route("/v1/hermes/state", self.to_scheduler, methods=["GET"]),
            ],
            exception_handlers=exception_handlers(on_refused=lambda request, status: None),
            lifespan=self._lifespan,
        )

    async def start(self) -> None:
        for c in self.clients.values():
            await c.start()
        await self.link.start()

    async def close(self) -> None:
        await self.link.close()
        for c in self.clients.values():
            await c.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.close()

    # Handlers --------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._completion(request, CHAT, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._completion(request, COMPLETIONS, chat=False)

    async def models(self, request: Request) -> Response:
        data = [{"id": m, "object": "model", "owned_by": "hermes"} for m in sorted(self.served)]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, request: Request) -> Response:
        body = {
            "status": "ok",
            "replica": self.name,
            "waiting": self.link.waiting,
            "scheduler_restarts_seen": self.link.restarts_seen,
        }
        return JSONResponse(body)

    async def to_scheduler(self, request: Request) -> Response:
        """A request for the scheduler's routes, answered there (its body is small)."""
        body = await request.body()
        scope = request.scope
        call = (request.method, scope["path"], scope["query_string"], scope["headers"], body)
        status, headers, answer = await self.link.remote.http(call)
        kept = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        kept.pop("content-length", None)  # Starlette sets it for `answer`
        return Response(answer, status_code=status, headers=kept)

    async def _completion(self, request: Request, path: str, chat: bool) -> Response:
        raw, body = await read_json(request)
        body = check_completion(body, chat)
        ctx = parse_context(request.headers)
        model = body["model"]
        if model not in self.served:
            raise NotFoundError(f"model {model!r} is not served here; see /v1/models", "model")
        caller, cls = caller_of(request), self.config.slo_class_of(model, ctx.slo_class)
        ctx = caller.admit(ctx, cls)
        pending = self.link.submit(ctx, model, estimate_prompt_tokens(body))
        try:
            grant = await self._turn(request, pending)
        except asyncio.CancelledError:  # Serve cancels a call whose client hung up
            self.link.release(pending.submit.call_id, "abort")
            raise
        if isinstance(grant, Response):
            return grant
        who = CallFacts(cls, caller.name, None, 0.0)  # the grant says the rest
        work = self._forward(pending.submit, grant, raw, body, path, who)
        if not self.watch_disconnects:
            return await work
        answer = await unless_disconnected(request, work)
        return Response(status_code=499) if answer is None else answer

    async def _turn(self, request: Request, pending: Pending) -> Granted | Response:
        """The call's grant; or the scheduler's error, or 499 if its client hung up first."""
        waits: list[asyncio.Future[Any]] = [pending.future]
        if self.watch_disconnects:
            waits.append(asyncio.ensure_future(until_disconnect(request)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits[1:]:
                w.cancel()
        if not pending.future.done():
            self.link.release(pending.submit.call_id, "abort")
            return Response(status_code=499)
        try:
            return pending.future.result()
        except RefusedError as e:
            r = e.refused
            body = error_body(r.status, r.type, r.message, r.param)
            return JSONResponse(body, status_code=r.status, headers=r.headers or None)

    # Forwarding ------------------------------------------------------------------------------

    async def _forward(
        self,
        sub: Submit,
        grant: Granted,
        raw: bytes,
        body: dict[str, Any],
        path: str,
        who: CallFacts,
    ) -> Response:
        """The upstream's answer; the call is released however it ends."""
        call_id = sub.call_id
        stream = bool(body.get("stream"))
        at = [grant.upstream]  # where the call is now (a retry moves it)
        try:
            if grant.upstream in self.deployments:  # through a handle, not HTTP
                heads = {REPLICA_HEADER: self.name}
                chat = path == CHAT
                return await self.deployments.forward(
                    sub, grant, body, chat, self.link.release, heads
                )
            resp = await self._open(sub, grant, raw, body, path, at, who)
            client = self.clients[at[0]]
            if stream and resp.status == 200:
                first = await self._first(client, resp)
                client.answer_began(resp)
                state = RelayedStream(body)

                def end() -> None:
                    resp.release()
                    self.link.release(call_id, state.finish, state.usage)

                relay = Relay(self._events(client, resp, first, state), end)
                relay.headers[REPLICA_HEADER] = self.name
                return relay
            client.answer_began(resp)
            return await self._whole(call_id, client, resp)
        except asyncio.CancelledError:
            self.link.release(call_id, "abort")
            raise
        except TimeoutError:
            self.link.release(call_id, "error")
            raise late(self.clients[at[0]], first=True) from None
        except aiohttp.ClientError as e:
            self.link.release(call_id, "error")
            raise UpstreamError(f"upstream {at[0]!r} failed: {e}") from None
        except Exception:
            self.link.release(call_id, "error")
            raise

    async def _open(
        self,
        sub: Submit,
        grant: Granted,
        raw: bytes,
        body: dict[str, Any],
        path: str,
        at: list[str],
        who: CallFacts,
    ) -> aiohttp.ClientResponse:
        """The upstream's response, headers read. A connection that fails before them is
        retried once, on the upstream the scheduler grants next (the first is marked down).
        `who`: the call's class and tenant, for the upstream's headers."""
        retried = False
        while True:
            client = self.clients[grant.upstream]
            at[0] = grant.upstream
            extra = dict(grant.extra)
            if body.get("stream"):  # usage always, to account it; stripped if not asked for
                opts = body.get("stream_options") or {}
                extra["stream_options"] = {**opts, "include_usage": True}
            data = client.prepare(raw, body, grant.rank, extra)
            facts = replace(who, deadline_left_s=grant.deadline_left_s, rank=grant.rank)
            headers = client.headers(facts)
            try:
                return await client.post(path, data, headers)
            except aiohttp.ConnectionTimeoutError as e:  # a TimeoutError, but retried
                error: aiohttp.ClientError = e
            except aiohttp.ClientError as e:
                error = e
            if retried:
                raise error
            retried = True
            try:
                grant = await self.link.retry(sub, grant.upstream).future
            except RefusedError as e:
                raise UpstreamError(f"upstream unavailable: {error}; {e.refused.message}") from None

    async def _first(self, client: UpstreamClient, resp: aiohttp.ClientResponse) -> bytes:
        try:
            first = await resp.content.readany()
        except BaseException:
            resp.release()
            raise
        if not first:
            resp.release()
            raise UpstreamError(f"upstream {client.backend.name!r} sent an empty stream")
        return first

    async def _whole(
        self, call_id: int, client: UpstreamClient, resp: aiohttp.ClientResponse
    ) -> Response:
        try:
            raw = await resp.read()
        finally:
            resp.release()
        status = resp.status
        if status >= 500:
            text = raw.decode("utf-8", "replace")[:300]
            raise UpstreamError(f"upstream {client.backend.name!r} answered {status}: {text}")
        usage: dict[str, Any] = {}
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                u = json.loads(raw).get("usage")
                usage = u if isinstance(u, dict) else {}
        self.link.release(call_id, "stop" if status == 200 else "error", usage)
        headers = {REPLICA_HEADER: self.name}
        return Response(raw, status_code=status, media_type="application/json", headers=headers)

    async def _events(
        self,
        client: UpstreamClient,
        resp: aiohttp.ClientResponse,
        first: bytes,
        state: RelayedStream,
    ) -> AsyncGenerator[bytes, None]:
        """The upstream's events as they come (its usage-only event dropped unless asked
        for); a failure becomes an SSE error event, the client having had its 200."""
        try:
            piece = first
            while piece:
                for event in state.feed(piece):
                    yield event
                piece = await resp.content.readany()
            if state.rest:
                yield state.rest
            state.finish = "stop"
        except TimeoutError:
            state.finish = "error"
            yield sse_error(late(client, first=False))
        except aiohttp.ClientError as e:
            state.finish = "error"
            yield sse_error(UpstreamError(f"upstream failed mid-stream: {e}"))
