"""Upstream health and bounded waits (issue 16, defects 8 and 9).

A stalled upstream (it accepts connections and answers nothing, as a SIGSTOPped engine does) is
found by the active health checks within seconds, taken out of rotation, its calls in flight
moved to another replica, and probed back in once it answers; `/metrics` and `/healthz` say
which upstreams are up. The first-byte and idle-between-chunks timeouts leave a healthy long
stream alone. A model with no healthy upstream gets its waiting calls 503 after
`queue_timeout_s` (429 when the wait is only a long queue), `/healthz` says degraded and names
it, and a gateway that stops does not wait for such calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hermes.gateway.serve import running
from hermes.gateway.server import Gateway
from hermes.testing.asgi_thread import serving
from test_gateway_faults import (
    CHAT,
    body,
    config,
    dead,
    gateway,
    metric,
    outcome,
    replica,
    settled,
    sse_error,
    wait_for,
)

FAST_CHECKS = {"interval_s": 0.2, "timeout_s": 0.3, "failures": 2}


class Stallable:
    """An engine replica that can be stalled: while `stalled`, it answers nothing, health
    checks included, as a process stopped with SIGSTOP (its connections stay open)."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.stalled = False
        self.stall_on_call = False  # stalls as the next call arrives
        self.stall_mid_stream = False  # stalls after a stream's first event
        self.requests = 0
        self.app = Starlette(
            routes=[
                Route(CHAT, self.chat, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )

    async def _while_stalled(self) -> None:
        while self.stalled:
            await asyncio.sleep(0.02)

    async def health(self, request: Request) -> Response:
        await self._while_stalled()
        return JSONResponse({})

    async def chat(self, request: Request) -> Response:
        payload = await request.json()
        self.requests += 1
        self.stalled |= self.stall_on_call
        await self._while_stalled()
        n = int(payload.get("max_tokens") or 4)
        if payload.get("stream"):
            return StreamingResponse(self._events(n))
        await asyncio.sleep(self.delay_s * n)
        msg = {"role": "assistant", "content": "x" * n}
        choice = {"index": 0, "message": msg, "finish_reason": "length"}
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        return JSONResponse(
            {"id": "c", "object": "chat.completion", "choices": [choice]}
            | {"created": 0, "model": payload["model"], "usage": usage}
        )

    async def _events(self, n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            self.stalled |= self.stall_mid_stream and i == 1
            await self._while_stalled()
            await asyncio.sleep(self.delay_s)
            chunk = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


@contextmanager
def stallable(delay_s: float = 0.01) -> Iterator[tuple[Stallable, str]]:
    r = Stallable(delay_s)
    with serving(r.app, "critical") as url:
        try:
            yield r, url
        finally:
            r.stalled = False  # lets its handlers end, so that its server stops


def healthz(base: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(base + "/healthz", timeout=10).json()
    return data


# Defect 8: a stalled upstream ----------------------------------------------------------------


def test_a_stalled_upstream_is_taken_out_within_seconds_and_probed_back_in() -> None:
    with (
        stallable() as (a, a_url),
        stallable() as (_, b_url),
        # The first-byte timeout is long: what takes `a` out is its health checks.
        gateway(
            {"a": a_url, "b": b_url},
            health_check=FAST_CHECKS,
            upstream_first_byte_timeout_s=120,
        ) as (gw, base),
    ):
        assert metric(gw, "hermes_upstream_up", upstream="a") == 1
        a.stalled = True
        assert wait_for(lambda: metric(gw, "hermes_upstream_up", upstream="a") == 0, 20)
        assert healthz(base)["upstreams"] == {"a": "down", "b": "up"}
        assert healthz(base)["status"] == "ok"  # b still serves model m
        before = a.requests
        answers = [httpx.post(base + CHAT, json=body(), timeout=30) for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 6
        assert a.requests == before  # no new call went to the stalled replica
        a.stalled = False
        assert wait_for(lambda: metric(gw, "hermes_upstream_up", upstream="a") == 1, 20)
        assert healthz(base)["upstreams"] == {"a": "up", "b": "up"}
        assert metric(gw, "hermes_upstream_health_checks_total", upstream="a", result="failed")
        assert wait_for(lambda: settled(gw))


@pytest.mark.parametrize("stream", [False, True])
def test_calls_in_flight_on_a_stalled_upstream_move_to_another_replica(stream: bool) -> None:
    """A call sent to `a` just before it stalls has no byte of answer yet: when the health
    checks take `a` out, its connection is closed and the call goes to `b`, long before its
    first-byte timeout (120 s)."""
    with (
        stallable() as (a, a_url),
        stallable() as (b, b_url),
        gateway(
            {"a": a_url, "b": b_url},
            {"a": 1, "b": 1},
            health_check=FAST_CHECKS,
            upstream_first_byte_timeout_s=120,
        ) as (gw, base),
    ):
        a.stall_on_call = True
        r = httpx.post(base + CHAT, json=body(stream), timeout=60)  # ties go to `a` first
        assert r.status_code == 200, r.text
        assert outcome(200, r.content, stream) == "ok"
        assert (a.requests, b.requests) == (1, 1)
        assert metric(gw, "hermes_upstream_up", upstream="a") == 0
        a.stalled = a.stall_on_call = False
        assert wait_for(lambda: settled(gw))


def test_a_stream_begun_on_an_upstream_that_stalls_ends_in_an_error_event() -> None:
    """A stream relayed from `a` when `a` stalls, its client holding a 200 and one event: when
    the health checks take `a` out, the stream ends at once in an SSE error event, long before
    the chunk timeout (120 s). Before: aiohttp's close detached the body from its connection,
    and the relay waited forever, its read timer gone with the connection."""
    with (
        stallable() as (a, a_url),
        gateway(
            {"a": a_url},
            health_check=FAST_CHECKS,
            upstream_first_byte_timeout_s=120,
            upstream_chunk_timeout_s=120,
        ) as (gw, base),
    ):
        a.stall_mid_stream = True
        r = httpx.post(base + CHAT, json=body(True, 8), timeout=60)
        assert r.status_code == 200, r.text
        assert outcome(200, r.content, True) == "error"
        assert r.content.count(b'"delta"') == 1
        assert "taken out of rotation" in sse_error(r.content)["message"]
        assert metric(gw, "hermes_upstream_up", upstream="a") == 0
        a.stalled = a.stall_mid_stream = False
        assert wait_for(lambda: settled(gw))


def test_a_healthy_long_stream_outlives_the_first_byte_and_chunk_timeouts() -> None:
    """40 events 100 ms apart: 4 s of stream under 1.5 s timeouts, each of which it meets
    (before, one whole-call timeout cut it)."""
    with (
        replica("ok", delay_s=0.1) as (_, url),
        gateway({"r": url}, upstream_first_byte_timeout_s=1.5, upstream_chunk_timeout_s=1.5) as (
            gw,
            base,
        ),
    ):
        r = httpx.post(base + CHAT, json=body(True, 40), timeout=30)
        assert r.status_code == 200
        assert outcome(200, r.content, True) == "ok"
        assert r.text.count('"delta"') == 40
        assert wait_for(lambda: settled(gw))


def test_the_deprecated_whole_call_timeout_still_cuts_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="hermes.gateway"),
        replica("ok", delay_s=0.05) as (_, url),
        gateway({"r": url}, upstream_timeout_s=1.0) as (gw, base),
    ):
        r = httpx.post(base + CHAT, json=body(True, 60), timeout=30)
        assert r.status_code == 200
        assert sse_error(r.content)["code"] == 504
        assert "upstream_timeout_s 1 s" in sse_error(r.content)["message"]
        assert wait_for(lambda: settled(gw))
    assert any("upstream_timeout_s is deprecated" in m for m in caplog.messages)


# Defect 9: no healthy upstream -------------------------------------------------------------


def test_calls_for_a_model_without_a_healthy_upstream_get_503_after_the_queue_timeout() -> None:
    with (
        dead("refuse") as down,
        gateway({"down": down}, health_check=FAST_CHECKS, queue_timeout_s=2.0) as (gw, base),
    ):
        assert wait_for(lambda: metric(gw, "hermes_upstream_up", upstream="down") == 0, 20)
        r = httpx.post(base + CHAT, json=body(), timeout=30)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        err = r.json()["error"]
        assert "no healthy upstream serves model 'm'" in err["message"]
        assert metric(gw, "hermes_queue_timeouts_total", status="503") == 1
        h = healthz(base)
        assert (h["status"], h["unavailable_models"]) == ("degraded", ["m"])
        assert "no healthy upstream serves model 'm'" in h["problems"]
        # Down for longer than queue_timeout_s now: refused at once, without queueing.
        assert wait_for(lambda: gw.health.unavailable_for("m") >= 2.0, 10)
        r = httpx.post(base + CHAT, json=body(), timeout=30)
        assert r.status_code == 503
        assert "none for" in r.json()["error"]["message"]
        assert wait_for(lambda: settled(gw))
        assert metric(gw, "hermes_request_success_total") == 1  # the one that queued


def test_a_call_that_waits_too_long_behind_others_gets_429_with_retry_after() -> None:
    with (
        replica("ok", delay_s=0.1) as (_, url),
        gateway({"r": url}, 1, queue_timeout_s=1.0) as (gw, base),
    ):
        blocker = threading.Thread(
            target=lambda: httpx.post(base + CHAT, json=body(False, 40), timeout=30)
        )
        blocker.start()  # holds the only slot for 4 s
        assert wait_for(lambda: gw.dispatcher.running == 1)
        r = httpx.post(base + CHAT, json=body(), timeout=30)
        blocker.join()
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert "queue_timeout_s" in r.json()["error"]["message"]
        assert metric(gw, "hermes_queue_timeouts_total", status="429") == 1
        assert wait_for(lambda: settled(gw))


def test_a_gateway_that_stops_answers_calls_waiting_for_a_model_that_is_down_with_503() -> None:
    """All replicas of the model down and calls waiting with a long queue timeout: stopping
    (Ctrl-C) ends them with 503 at once rather than waiting for them forever."""
    with dead("refuse") as down:
        cfg = config({"down": down}, health_check=FAST_CHECKS, queue_timeout_s=600)
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        ready = threading.Event()
        served: list[tuple[Gateway, str]] = []

        async def main() -> None:
            async with running(cfg) as (gw, base):
                served.append((gw, base))
                ready.set()
                await stop.wait()

        server = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        server.start()
        assert ready.wait(30)
        gw, base = served[0]
        assert wait_for(lambda: not gw.dispatcher.healthy("down"), 20)
        answers: list[httpx.Response] = []
        calls = [
            threading.Thread(
                target=lambda: answers.append(httpx.post(base + CHAT, json=body(), timeout=120))
            )
            for _ in range(3)
        ]
        for t in calls:
            t.start()
        assert wait_for(lambda: gw.dispatcher.queued == 3, 20)
        loop.call_soon_threadsafe(stop.set)
        server.join(timeout=60)  # before: never (the calls waited forever, and so did it)
        assert not server.is_alive()
        loop.close()
        for t in calls:
            t.join(timeout=30)
        assert [r.status_code for r in answers] == [503] * 3
        assert all("shutting down" in r.json()["error"]["message"] for r in answers)
