"""A granted call sent to its upstream and answered: the whole answer, or a relayed stream.
Until the upstream's headers nothing has reached the client, so a refused, dropped or timed-out
connection is retried once on another replica; after them a failure is an explicit error.

Timeouts: the first byte (a stream's headers and first event, a whole answer's headers) must
come within `upstream_first_byte_timeout_s`; after it, no silence may last
`upstream_chunk_timeout_s` (`UpstreamClient.answer_began`). An upstream that the health checks
take out has its connections closed: its calls end then, those still without headers retried
elsewhere like a dropped connection, and those answering with an explicit error (a relayed
stream with an SSE error event)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from starlette.responses import Response

from hermes.gateway.calls import Call, CallLifecycle
from hermes.gateway.errors import ApiError, UpstreamError, UpstreamTimeoutError
from hermes.gateway.inference_headers import CallFacts
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.prewarm import PrewarmActuator
from hermes.gateway.relay import Relay, relay_events
from hermes.gateway.upstream import UpstreamClient, late
from hermes.policies.slo_class import SloClassOptions, engine_rank
from hermes.types import Clock, SloClass

log = logging.getLogger("hermes.gateway")


class Forwarder:
    def __init__(
        self,
        calls: CallLifecycle,
        clients: dict[str, UpstreamClient],
        prewarm: PrewarmActuator,
        metrics: GatewayMetrics,
        clock: Clock,
        slo: SloClassOptions,
    ) -> None:
        self.calls = calls
        self.clients = clients
        self.prewarm = prewarm
        self.metrics = metrics
        self.clock = clock
        self.slo = slo
        # Fields that keep a call on its application's cache (`affinity.SlotAffinity`).
        self.cache_fields: Callable[[Call, str], dict[str, Any]] = lambda call, upstream: {}

    async def answer(self, call: Call, upstream: str, path: str) -> Response:
        """The upstream's answer; raises an `ApiError` until the upstream's headers (a failed
        connection retried once elsewhere); an SSE error event once a stream has begun.
        Cancelled when the client hangs up. The call is accounted for however it ends."""
        stream = bool(call.body.get("stream"))
        try:
            upstream, resp = await self._open(call, upstream, path, stream)
            if stream and resp.status == 200:
                first = await self._first(upstream, resp)
                self.clients[upstream].answer_began(resp)

                def end() -> None:
                    self._relayed(call, resp)

                silent = self._late(upstream, first=False)
                events = relay_events(
                    call, upstream, resp, first, self.metrics, self.clock, end, silent
                )
                return Relay(events, end)
            self.clients[upstream].answer_began(resp)
            return await self._whole(call, upstream, resp)
        except asyncio.CancelledError:
            self.calls.account(call, {}, "abort")
            raise
        except Exception:  # ApiError: answered by the table; else a bug, answered with 500
            self.calls.account(call, {}, "error")
            raise

    def _request(self, call: Call, upstream: str, stream: bool) -> tuple[bytes, dict[str, str]]:
        """The body and headers to send `upstream`."""
        extra = {}
        if stream:  # usage always, to record it; stripped if not asked for
            opts = call.body.get("stream_options") or {}
            extra["stream_options"] = {**opts, "include_usage": True}
        extra.update(self.cache_fields(call, upstream))
        cls: SloClass = "rt" if call.rt else "be"
        rank = engine_rank(call.waiting.priority if call.waiting else 0.0, cls, self.slo)
        client = self.clients[upstream]
        deadline = call.ticket.app.view.deadline_s
        left = None if deadline is None else deadline - self.clock()
        headers = client.headers(CallFacts(cls, call.tenant, left, rank))
        return client.prepare(call.raw, call.body, rank, extra), headers

    async def _open(
        self, call: Call, upstream: str, path: str, stream: bool
    ) -> tuple[str, aiohttp.ClientResponse]:
        """The upstream and its response, headers read."""
        while True:
            client = self.clients[upstream]
            if self.prewarm.active and not await self.prewarm.ready(upstream, call.model):
                nxt = await self.calls.retry_elsewhere(call, upstream, "prewarm")
                if nxt is None:
                    raise UpstreamError(
                        f"upstream {upstream!r} could not be woken or load {call.model!r}"
                    )
                upstream = nxt
                continue
            try:
                body, headers = self._request(call, upstream, stream)
                return upstream, await client.post(path, body, headers)
            except aiohttp.ConnectionTimeoutError as e:  # a TimeoutError, but retried
                error: aiohttp.ClientError = e
            except TimeoutError:
                self.metrics.upstream_errors.labels(upstream, "timeout").inc()
                raise self._late(upstream, first=True) from None
            except aiohttp.ClientError as e:
                error = e
            nxt = await self.calls.retry_elsewhere(call, upstream, "connect")
            if nxt is None:
                raise UpstreamError(f"upstream unavailable: {error}")
            upstream = nxt

    async def _whole(self, call: Call, upstream: str, resp: aiohttp.ClientResponse) -> Response:
        """The upstream's answer in one piece: a 4xx as it is (the caller's to fix, e.g. a
        prompt too long), a 5xx as 502. Not retried: the upstream had begun to answer."""
        try:
            raw = await resp.read()
        except TimeoutError:
            self.metrics.upstream_errors.labels(upstream, "timeout").inc()
            raise self._late(upstream, first=False) from None
        except aiohttp.ClientError as e:
            self.metrics.upstream_errors.labels(upstream, "midstream").inc()
            raise UpstreamError(f"upstream failed mid-answer: {e}") from None
        finally:
            resp.release()  # read through: back to the pool; cut off: closed
        status = resp.status
        if status != 200:
            self.metrics.upstream_errors.labels(upstream, f"http_{status}").inc()
            if status < 500:  # passed on as it is, so the error table never sees it
                text = raw.decode("utf-8", "replace")[:300]
                log.info("upstream %s refused a call with %d: %s", upstream, status, text)
        if status >= 500:
            text = raw.decode("utf-8", "replace")[:300]
            raise UpstreamError(f"upstream {upstream!r} answered {status}: {text}")
        usage: dict[str, Any] = {}
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                u = json.loads(raw).get("usage")
                usage = u if isinstance(u, dict) else {}
        self.calls.account(call, usage, "stop" if status == 200 else "error")
        return Response(raw, status_code=status, media_type="application/json")

    async def _first(self, upstream: str, resp: aiohttp.ClientResponse) -> bytes:
        """A stream's first bytes, read before the client gets its 200: a failure until then is
        still an HTTP error. Reading from the headers on also keeps what came with a failure:
        aiohttp raises a failure set while no read was waiting before the data it buffered."""
        error: ApiError
        try:
            first = await resp.content.readany()
        except asyncio.CancelledError:
            resp.release()  # closed: the upstream stops
            raise
        except TimeoutError:
            error = self._late(upstream, first=True)
            kind = "timeout"
        except aiohttp.ClientError as e:
            error = UpstreamError(f"upstream failed before its first event: {e}")
            kind = "midstream"
        else:
            if first:
                return first
            error = UpstreamError(f"upstream {upstream!r} sent an empty stream")
            kind = "empty"
        resp.release()
        self.metrics.upstream_errors.labels(upstream, kind).inc()
        raise error

    def _late(self, upstream: str, first: bool) -> UpstreamTimeoutError:
        return late(self.clients[upstream], first)

    def _relayed(self, call: Call, resp: aiohttp.ClientResponse) -> None:
        resp.release()  # cut off (the client hung up): closed, and the upstream stops
        usage = call.usage or {
            "prompt_tokens": call.ticket.info.prompt_tokens,
            "completion_tokens": max(0, call.chunks - 1),
        }
        self.calls.account(call, usage, call.finish)
