"""The gateway's reliability over real HTTP, with faults injected by fake engine replicas.

Every call the gateway accepts ends in a full answer or an explicit error (HTTP 4xx/5xx with an
error body, or an SSE error event once streaming started), under load as one at a time; a
client that hangs up cancels its upstream call; a full queue sheds with 429; calls are retried
on another replica only before the upstream's first byte; shutdown drains calls in flight.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.serve import running
from hermes.gateway.server import Gateway
from hermes.testing.asgi_thread import serving
from hermes.testing.prometheus_text import metric_sum

CHAT = "/v1/chat/completions"
TOO_LONG = {"object": "error", "message": "the prompt is too long", "code": 400}


# Fake upstreams --------------------------------------------------------------------------------


def _chunk(model: str, choices: list[Any], usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 0}
    body |= {"model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _half_json() -> AsyncIterator[bytes]:
    yield b'{"id": "c", "object": "chat.completion", "choices": ['
    raise RuntimeError("the engine died mid-response")


async def _unless_gone(request: Request, seconds: float) -> bool:
    """Wait `seconds`; False as soon as the caller hangs up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return False
        await asyncio.sleep(0.02)
    return True


class Replica:
    """An OpenAI-style engine replica; `mode` injects one fault.

    ok: `max_tokens` chunks `delay_s` apart, once `held` is clear. "500", "400": that status
    at once. slow: the unary answer after `stall_s`; a stream's first chunk, then silence for
    `stall_s`. prefill: the same, but a stream's silence comes before its first chunk. stall:
    no headers for `stall_s`. midstream: two chunks (or half a JSON body), then the connection
    drops. headers: a stream's headers, then the connection drops.
    """

    def __init__(self, mode: str = "ok", delay_s: float = 0.0, stall_s: float = 10.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.stall_s = stall_s
        self.requests = 0
        self.active = 0
        self.hung_up = 0  # answers the gateway abandoned (cancelled) before their end
        self.held = False  # calls wait before their answer while set (the test says when)
        self.app = Starlette(
            routes=[
                Route(CHAT, self.chat, methods=["POST"]),
                Route("/health", lambda r: JSONResponse({}), methods=["GET"]),
            ]
        )

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests += 1
        while self.held:
            await asyncio.sleep(0.01)
        n = int(body.get("max_tokens") or 4)
        stream = bool(body.get("stream"))
        if self.mode == "500":
            return JSONResponse({"error": {"message": "engine crashed"}}, status_code=500)
        if self.mode == "400":
            return JSONResponse(TOO_LONG, status_code=400)
        stalls = self.mode == "stall" or (self.mode in ("slow", "prefill") and not stream)
        if stalls and not await _unless_gone(request, self.stall_s):
            self.hung_up += 1
            return Response(status_code=499)
        if stream:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._events(body["model"], n, usage))
        if self.mode == "midstream":
            return StreamingResponse(_half_json(), media_type="application/json")
        self.active += 1
        try:
            if not await _unless_gone(request, self.delay_s * n):
                self.hung_up += 1
                return Response(status_code=499)
        finally:
            self.active -= 1
        msg = {"role": "assistant", "content": "x" * n}
        return JSONResponse(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": msg, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n},
            }
        )

    async def _events(self, model: str, n: int, usage: bool) -> AsyncIterator[bytes]:
        delta = [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]
        self.active += 1
        try:
            for i in range(n):
                if (self.mode, i) in (("midstream", 2), ("headers", 0)):
                    raise RuntimeError("the engine died mid-stream")
                slow = (self.mode, i) in (("slow", 1), ("prefill", 0))
                await asyncio.sleep(self.stall_s if slow else self.delay_s)
                yield _chunk(model, delta)
            if usage:
                yield _chunk(model, [], {"prompt_tokens": 7, "completion_tokens": n})
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.hung_up += 1
            raise
        finally:
            self.active -= 1


@contextmanager
def replica(mode: str = "ok", **kw: float) -> Iterator[tuple[Replica, str]]:
    r = Replica(mode, **kw)
    with serving(r.app, "critical") as url:  # quiet: a replica dies by raising, which is logged
        yield r, url


class _Drop(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)  # and close, answering nothing


@contextmanager
def dead(kind: str) -> Iterator[str]:
    """A replica that is down: "refuse" (nothing listens: connection refused) or "drop" (it
    accepts, reads the request and closes the connection without an answer)."""
    if kind == "refuse":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))  # bound, never listening: the port stays ours, refusing
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        return
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Drop)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# The gateway ----------------------------------------------------------------------------------


def config(urls: dict[str, str], concurrency: int | dict[str, int] = 4, **kw: Any) -> GatewayConfig:
    """One backend per `urls` entry (in order: the dispatcher breaks ties by it)."""

    def slots(name: str) -> int:
        return concurrency if isinstance(concurrency, int) else concurrency[name]

    backends = [
        Backend(name=n, kind="vllm", url=u, models=["m"], concurrency=slots(n))
        for n, u in urls.items()
    ]
    # Probed once a minute unless a test says otherwise: here the calls find the faults
    # themselves, however long a busy machine takes to send them.
    kw.setdefault("health_check", {"interval_s": 60})
    return GatewayConfig(backends=backends, **kw)


@contextmanager
def gateway(
    urls: dict[str, str], concurrency: int | dict[str, int] = 4, **kw: Any
) -> Iterator[tuple[Gateway, str]]:
    gw = Gateway(config(urls, concurrency, **kw))
    with serving(gw.app) as base:
        yield gw, base


def body(stream: bool = False, tokens: int = 4) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hello"}]
    return {"model": "m", "messages": messages, "max_tokens": tokens, "stream": stream}


def metric(gw: Gateway, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return metric_sum(gw.metrics.render().decode(), name, **labels)


def wait_for(cond: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Whether `cond` holds within `timeout_s`: a bound for a hang, not a timing claim (a
    busy machine may take seconds)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def settled(gw: Gateway) -> bool:
    """Nothing queued, nothing running, no application with a call in flight."""
    return (
        gw.dispatcher.running == 0
        and gw.dispatcher.queued == 0
        and all(a.in_flight == 0 for a in list(gw.tracker.apps.values()))
    )


def outcome(status: int, raw: bytes, stream: bool) -> str:
    """'ok' (a full answer), 'error' (an explicit one), or what is wrong with the answer."""
    if status != 200:
        try:
            err = json.loads(raw).get("error")
        except ValueError:
            return f"{status} without a JSON body: {raw[:80]!r}"
        return "error" if isinstance(err, dict) and err.get("message") else f"{status}: {raw!r}"
    if not stream:
        return "ok" if json.loads(raw).get("choices") else f"200 without choices: {raw[:80]!r}"
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    if not events:
        return "an empty stream"
    if any(b'"error"' in e for e in events[:-1]):
        return "an error event before the end"
    if events[-1] == b"data: [DONE]":
        return "ok"
    if events[-1].startswith(b"data: {") and "error" in json.loads(events[-1][6:]):
        return "error"
    return f"a truncated stream ending {events[-1][:80]!r}"


def sse_error(raw: bytes) -> dict[str, Any]:
    last = [e for e in raw.split(b"\n\n") if e.strip()][-1]
    assert last.startswith(b"data: {"), last
    err: dict[str, Any] = json.loads(last[6:])["error"]
    return err


# 1. Load with injected faults ------------------------------------------------------------------


def test_every_call_ends_in_an_answer_or_an_explicit_error_under_load_with_faults() -> None:
    """300 concurrent calls (unary and streaming, with and without application headers, a few
    malformed) over two healthy replicas and five faulty ones: each ends in a full answer or an
    explicit error, none hangs or ends truncated, and the accounting adds up afterwards."""
    n = 300
    rng = random.Random(7)
    with (
        replica("ok", delay_s=0.005) as (_, ok_a),
        replica("ok", delay_s=0.005) as (_, ok_b),
        replica("500") as (_, e500),
        replica("slow", stall_s=5.0) as (slow, slow_url),
        replica("midstream", delay_s=0.005) as (_, mid),
        dead("refuse") as refuse,
        dead("drop") as drop,
    ):
        urls = {"refuse": refuse, "drop": drop, "e500": e500, "slow": slow_url, "mid": mid}
        urls |= {"ok-a": ok_a, "ok-b": ok_b}
        slots = dict.fromkeys(urls, 4) | {"ok-a": 12, "ok-b": 12}
        timeouts = {"upstream_first_byte_timeout_s": 1.0, "upstream_chunk_timeout_s": 1.0}
        with gateway(urls, slots, **timeouts) as (gw, base):

            async def one(i: int, client: httpx.AsyncClient) -> tuple[str, bool]:
                stream = rng.random() < 0.5
                headers = {}
                if i % 2:
                    headers = {"x-hermes-app-id": f"app-{i % 25}", "x-hermes-app-type": "agent"}
                    headers["x-hermes-stage"] = f"s{i % 3}"
                content = json.dumps(body(stream, rng.randint(2, 8))).encode()
                if i % 50 == 0:
                    content = b'{"model": "m", "messages": ['  # malformed JSON
                elif i % 50 == 25:
                    headers = {"x-hermes-deadline-ms": "-1"}  # a bad header
                try:
                    async with client.stream("POST", CHAT, content=content, headers=headers) as r:
                        raw = await r.aread()
                except httpx.TimeoutException:
                    return "a hang (client timeout)", False
                except httpx.HTTPError as e:
                    return f"a broken answer: {e!r}", False
                return outcome(r.status_code, raw, stream), r.status_code == 400

            async def main() -> list[tuple[str, bool]]:
                limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
                async with httpx.AsyncClient(base_url=base, timeout=20.0, limits=limits) as client:
                    return await asyncio.gather(*(one(i, client) for i in range(n)))

            results = asyncio.run(main())  # none hangs: each has 20 s, the lot takes ~3
            bad = [o for o, _ in results if o not in ("ok", "error")]
            assert not bad, bad[:10]
            ok = sum(o == "ok" for o, _ in results)
            errors = sum(o == "error" for o, _ in results)
            rejected = sum(r for _, r in results)
            assert ok + errors == n
            assert rejected == 12
            assert ok > n / 4  # the healthy replicas carried their share, retries included
            # Each fault was met, and answered by an explicit error.
            assert metric(gw, "hermes_upstream_errors_total", upstream="refuse", kind="connect")
            assert metric(gw, "hermes_upstream_errors_total", upstream="drop", kind="connect")
            assert metric(gw, "hermes_upstream_errors_total", upstream="e500", kind="http_500")
            assert metric(gw, "hermes_upstream_errors_total", upstream="slow", kind="timeout")
            assert metric(gw, "hermes_upstream_errors_total", upstream="mid", kind="midstream")
            # The accounting is consistent: nothing left in the queue or in flight, and the
            # counters add up to what the clients saw.
            assert wait_for(lambda: settled(gw)), (gw.dispatcher.running, gw.dispatcher.queued)
            assert metric(gw, "hermes_request_rejections_total") == rejected
            assert metric(gw, "hermes_request_success_total", finished_reason="stop") == ok
            assert metric(gw, "hermes_request_success_total", finished_reason="error") == (
                errors - rejected
            )
            assert metric(gw, "hermes_request_success_total") == n - rejected
            assert metric(gw, "hermes_num_requests_running") == 0
            assert metric(gw, "hermes_num_requests_waiting") == 0
            # The slow replica's calls were abandoned when they timed out, not left running.
            assert wait_for(lambda: slow.active == 0)


# 2. Client disconnects --------------------------------------------------------------------------


def test_a_client_that_hangs_up_mid_stream_cancels_the_upstream_call() -> None:
    with replica("ok", delay_s=0.05) as (up, url), gateway({"r": url}) as (gw, base):
        heads = {"x-hermes-app-id": "a", "x-hermes-app-type": "t"}
        with httpx.stream("POST", base + CHAT, json=body(True, 200), headers=heads) as r:
            assert r.status_code == 200
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data: ")
                if events == 2:
                    break  # and close the connection
        assert wait_for(lambda: up.hung_up == 1)
        assert wait_for(lambda: settled(gw))
        assert up.active == 0
        assert metric(gw, "hermes_request_success_total", finished_reason="abort") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_while_queued_never_reaches_upstream(stream: bool) -> None:
    with replica("ok", delay_s=0.05) as (up, url), gateway({"r": url}, 1) as (gw, base):
        up.held = True  # the blocker holds the only slot until the test lets it go
        blocker = threading.Thread(
            target=lambda: httpx.post(base + CHAT, json=body(False, 3), timeout=30)
        )
        blocker.start()
        assert wait_for(lambda: up.requests == 1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + CHAT, json=body(stream, 20), timeout=httpx.Timeout(5.0, read=0.2))
        assert wait_for(lambda: gw.dispatcher.queued == 0)
        assert gw.dispatcher.running == 1  # the blocker, still running
        up.held = False
        blocker.join()
        time.sleep(0.1)  # time enough for a call wrongly left in the queue to reach upstream
        assert settled(gw)
        assert up.requests == 1
        assert metric(gw, "hermes_request_success_total", finished_reason="abort") == 1


@pytest.mark.parametrize(
    ("mode", "stream"), [("ok", False), ("stall", False), ("stall", True), ("prefill", True)]
)
def test_a_client_that_hangs_up_before_its_first_byte_cancels_the_upstream_call(
    mode: str, stream: bool
) -> None:
    """Starlette notices a disconnect only while streaming: before that (a unary answer being
    generated, an upstream slow to send its headers) the gateway watches for it itself."""
    with replica(mode, delay_s=0.05) as (up, url), gateway({"r": url}) as (gw, base):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + CHAT, json=body(stream, 100), timeout=httpx.Timeout(5.0, read=0.3))
        assert wait_for(lambda: up.hung_up == 1)
        assert wait_for(lambda: settled(gw))
        assert metric(gw, "hermes_request_success_total", finished_reason="abort") == 1


# 3. Queue bound -----------------------------------------------------------------------------------


def test_a_full_queue_sheds_with_429_and_retry_after() -> None:
    with (
        replica("ok", delay_s=0.05) as (up, url),
        gateway({"r": url}, 1, queue_limit=2) as (gw, base),
    ):

        async def main() -> list[httpx.Response]:
            up.held = True  # one call runs and two wait until the three others are shed
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                calls = [
                    asyncio.create_task(client.post(CHAT, json=body(False, 2))) for _ in range(6)
                ]
                while sum(c.done() for c in calls) < 3:
                    await asyncio.sleep(0.01)
                up.held = False
                return await asyncio.gather(*calls)

        answers = asyncio.run(main())
        shed = [r for r in answers if r.status_code == 429]
        assert sorted(r.status_code for r in answers) == [200] * 3 + [429] * 3
        assert all(r.headers["retry-after"] == "1" for r in shed)
        assert all("queue is full" in r.json()["error"]["message"] for r in shed)
        assert wait_for(lambda: settled(gw))
        assert metric(gw, "hermes_request_rejections_total", reason="429") == 3


# 4. Retries only before the first byte ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["refuse", "drop"])
def test_a_replica_that_is_down_is_retried_once_elsewhere(fault: str, stream: bool) -> None:
    with (
        dead(fault) as down,
        replica("ok") as (up, url),
        gateway({"down": down, "up": url}, 1) as (gw, base),
    ):
        r = httpx.post(base + CHAT, json=body(stream, 3), timeout=10)
        assert r.status_code == 200
        assert outcome(200, r.content, stream) == "ok"
        assert up.requests == 1
        assert metric(gw, "hermes_upstream_errors_total", upstream="down", kind="connect") == 1
        assert wait_for(lambda: settled(gw))


def test_a_retry_waits_for_a_busy_replica_rather_than_failing() -> None:
    """The only other replica is busy when the first one refuses: the call queues (first in
    line) for it, and succeeds."""
    with (
        dead("refuse") as down,
        replica("ok", delay_s=0.05) as (up, url),
        gateway({"up": url, "down": down}, 1) as (gw, base),
    ):
        up.held = True
        first = threading.Thread(
            target=lambda: httpx.post(base + CHAT, json=body(False, 2), timeout=30)
        )
        first.start()  # on "up" (ties go to the first listed), held there
        assert wait_for(lambda: up.requests == 1)
        answers: list[httpx.Response] = []
        second = threading.Thread(  # "down", then waits for "up"
            target=lambda: answers.append(httpx.post(base + CHAT, json=body(False, 2), timeout=30))
        )
        second.start()
        retried = {"upstream": "down", "kind": "connect"}
        assert wait_for(lambda: metric(gw, "hermes_upstream_errors_total", **retried) == 1)
        assert wait_for(lambda: gw.dispatcher.queued == 1)  # first in line for "up"
        up.held = False
        first.join()
        second.join()
        (r,) = answers
        assert r.status_code == 200, r.text
        assert up.requests == 2
        assert metric(gw, "hermes_upstream_errors_total", upstream="down", kind="connect") == 1
        assert wait_for(lambda: settled(gw))


def test_a_stream_that_fails_before_its_first_event_gets_502_and_is_not_retried() -> None:
    with (
        replica("headers") as (dying, dying_url),
        replica("ok") as (up, url),
        gateway({"dying": dying_url, "up": url}, 1) as (gw, base),
    ):
        r = httpx.post(base + CHAT, json=body(True), timeout=10)
        assert r.status_code == 502
        assert "before its first event" in r.json()["error"]["message"]
        assert (dying.requests, up.requests) == (1, 0)
        assert wait_for(lambda: settled(gw))


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_after_the_first_byte_is_not_retried(stream: bool) -> None:
    with (
        replica("midstream", delay_s=0.01) as (mid, mid_url),
        replica("ok") as (up, url),
        gateway({"mid": mid_url, "up": url}, 1) as (gw, base),
    ):
        r = httpx.post(base + CHAT, json=body(stream, 5), timeout=10)
        if stream:
            assert r.status_code == 200
            assert r.text.count('"delta"') == 2  # what the client had, then the error
            err = sse_error(r.content)
            assert err["code"] == 502
            assert "mid-stream" in err["message"]
        else:
            assert r.status_code == 502
            assert r.json()["error"]["type"] == "upstream_error"
        assert mid.requests == 1
        assert up.requests == 0
        assert wait_for(lambda: settled(gw))


# 5. Graceful shutdown -----------------------------------------------------------------------------


def test_shutdown_drains_calls_in_flight_and_refuses_new_ones_with_503() -> None:
    with replica("ok", delay_s=0.1) as (up, url):
        cfg = config({"r": url})
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
        answers: list[tuple[bool, httpx.Response]] = []
        up.held = True  # the four stay in flight until the late call has had its 503

        def call(stream: bool) -> None:
            answers.append((stream, httpx.post(base + CHAT, json=body(stream, 15), timeout=30)))

        calls = [threading.Thread(target=call, args=(s,)) for s in (False, True, False, True)]
        for t in calls:
            t.start()
        assert wait_for(lambda: gw.dispatcher.running == 4)
        loop.call_soon_threadsafe(stop.set)
        assert wait_for(lambda: httpx.get(base + "/healthz").status_code == 503)
        late = httpx.post(base + CHAT, json=body(), timeout=30)
        assert late.status_code == 503
        assert "shutting down" in late.json()["error"]["message"]
        up.held = False
        for t in calls:
            t.join()
        server.join(timeout=30)
        assert not server.is_alive()
        loop.close()
        assert len(answers) == 4
        for stream, r in answers:
            assert r.status_code == 200
            assert outcome(200, r.content, stream) == "ok"
            if not stream:
                assert r.json()["choices"][0]["message"]["content"] == "x" * 15
        assert up.requests == 4
        assert settled(gw)


# 6. Timeouts, and the upstream's own errors -----------------------------------------------------


def test_a_slow_upstream_times_out_with_504_or_an_sse_error() -> None:
    with (
        replica("slow", stall_s=5.0) as (up, url),
        gateway({"r": url}, upstream_first_byte_timeout_s=0.5, upstream_chunk_timeout_s=0.5) as (
            gw,
            base,
        ),
    ):
        r = httpx.post(base + CHAT, json=body(), timeout=10)
        assert r.status_code == 504
        assert "no first byte within 0.5 s" in r.json()["error"]["message"]
        s = httpx.post(base + CHAT, json=body(True), timeout=10)
        assert s.status_code == 200
        assert s.text.count('"delta"') == 1  # the first chunk came, then nothing
        err = sse_error(s.content)
        assert err["code"] == 504  # a 504 only comes from the timeout
        assert "silent for 0.5 s mid-answer" in err["message"]
        assert wait_for(lambda: up.hung_up == 2)  # the gateway hung up on both
        assert wait_for(lambda: settled(gw))
        assert metric(gw, "hermes_request_success_total", finished_reason="error") == 2


@pytest.mark.parametrize(("mode", "stream"), [("stall", False), ("stall", True), ("prefill", True)])
def test_an_upstream_without_a_first_event_in_time_gets_504(mode: str, stream: bool) -> None:
    with (
        replica(mode, stall_s=5.0) as (up, url),
        gateway({"r": url}, upstream_first_byte_timeout_s=0.5) as (gw, base),
    ):
        r = httpx.post(base + CHAT, json=body(stream), timeout=10)
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "upstream_timeout"
        assert wait_for(lambda: up.hung_up == 1)
        assert wait_for(lambda: settled(gw))


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_4xx_reaches_the_client_as_it_is(stream: bool) -> None:
    """A prompt too long is the client's fault: its 400 and message, not a 502."""
    with replica("400") as (_, url), gateway({"r": url}) as (gw, base):
        r = httpx.post(base + CHAT, json=body(stream), timeout=10)
        assert r.status_code == 400
        assert r.json() == TOO_LONG
        assert metric(gw, "hermes_upstream_errors_total", kind="http_400") == 1
        assert wait_for(lambda: settled(gw))


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_5xx_becomes_502_with_an_error_body(stream: bool) -> None:
    with replica("500") as (_, url), gateway({"r": url}) as (gw, base):
        r = httpx.post(base + CHAT, json=body(stream), timeout=10)
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["type"] == "upstream_error"
        assert "500" in err["message"]
        assert wait_for(lambda: settled(gw))
