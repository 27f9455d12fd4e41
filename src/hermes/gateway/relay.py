"""The streaming relay: an upstream's server-sent events passed on as they come, a failure
after the client's 200 as an SSE error event, and a client that hangs up cancelling its
upstream call, streaming or not."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from hermes.gateway.errors import UpstreamError, UpstreamTimeoutError, sse_error
from hermes.gateway.metrics import GatewayMetrics
from hermes.types import Clock

if TYPE_CHECKING:
    from hermes.gateway.calls import Call

log = logging.getLogger("hermes.gateway")


async def relay_events(
    call: Call,
    upstream: str,
    resp: aiohttp.ClientResponse,
    first: bytes,
    metrics: GatewayMetrics,
    clock: Clock,
    on_end: Callable[[], None],
    late: UpstreamTimeoutError,
) -> AsyncGenerator[bytes, None]:
    """The upstream's events as they come, its usage-only event dropped unless asked for;
    a failure becomes an SSE error event (`late` if it fell silent too long), the client
    having had its 200. `on_end` runs when the stream ends, before the last send."""
    events = SseEvents(call.body)
    try:
        piece = first
        while piece:  # b"": the end of the stream
            for event in events.feed(piece):
                if not call.chunks:
                    call.first_token_s = clock()
                    metrics.ttft.observe(call.first_token_s - call.arrived_s)
                call.chunks += 1
                yield event
            if events.usage is not None:
                call.usage = events.usage
            piece = await resp.content.readany()
        if events.rest:
            yield events.rest
        call.finish = "stop"
    except TimeoutError:
        metrics.upstream_errors.labels(upstream, "timeout").inc()
        call.finish = "error"
        # After the 200 the table never sees these: logged here, as it logs the others.
        log.warning("a stream from upstream %s ended with an error: %s", upstream, late)
        yield sse_error(late)
    except aiohttp.ClientError as e:
        metrics.upstream_errors.labels(upstream, "midstream").inc()
        call.finish = "error"
        log.warning(
            "a stream from upstream %s ended with an error: failed mid-stream: %s", upstream, e
        )
        yield sse_error(UpstreamError(f"upstream failed mid-stream: {e}"))
    finally:
        # Here, before Starlette's last send, so that a client holding its whole answer
        # finds the call ended; `Relay` ends the streams that never got here.
        on_end()


class Relay(StreamingResponse):
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


async def until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(
    request: Request, work: Coroutine[Any, Any, Response]
) -> Response | None:
    """`work`'s response, or None if the client hangs up first: `work` is cancelled then, and
    with it the upstream call (Starlette notices a disconnect by itself only while streaming)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnect(request))
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


class SseEvents:
    """Server-sent events cut whole from the bytes of a stream as they come (every relay:
    the gateway's, the Ray ingress's, a Serve deployment's), with the last usage seen; the
    usage-only event is dropped unless the client's `body` asked for usage."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.usage: dict[str, Any] | None = None
        self._buffer = b""

    def feed(self, piece: bytes) -> Iterator[bytes]:
        """The whole events `piece` completes, each with its blank line."""
        self._buffer += piece
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            u = usage_of(event)
            if u is not None:
                self.usage = u
                if not self.wants_usage and is_usage_only(event):
                    continue
            yield event + b"\n\n"

    @property
    def rest(self) -> bytes:
        """What is left after the last whole event, if more than blanks."""
        return self._buffer if self._buffer.strip() else b""


class RelayedStream(SseEvents):
    """A relayed stream's events and how it ended: "abort" until it ends otherwise."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__(body)
        self.finish = "abort"


def usage_of(event: bytes) -> dict[str, Any] | None:
    if not event.startswith(b"data: {") or b'"usage"' not in event:
        return None
    try:
        u = json.loads(event[6:]).get("usage")
    except (ValueError, AttributeError):
        return None
    return u if isinstance(u, dict) else None


def is_usage_only(event: bytes) -> bool:
    try:
        return not json.loads(event[6:]).get("choices")
    except (ValueError, AttributeError):
        return False
