"""The gateway over real HTTP: the official `openai` client in front, a scriptable fake
upstream behind (for fault injection), both on uvicorn."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hermes.core.runs import AppRun
from hermes.gateway.build import build_gateway
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.server import Gateway
from hermes.testing.asgi_thread import serving


class FakeUpstream:
    """An OpenAI-style engine: `tokens` chunks `delay_s` apart; `mode` injects faults."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay_s = 0.0
        self.tokens = 4
        self.seen: list[dict[str, Any]] = []
        self.active = 0
        self.peak = 0
        self.cancelled = 0
        # While set and not yet released, whole (non-streamed) answers wait here.
        self.gate: threading.Event | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.chat, methods=["POST"]),
                Route("/health", lambda r: JSONResponse({}), methods=["GET"]),
            ]
        )

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(body)
        if self.mode == "500":
            return JSONResponse({"error": "boom"}, status_code=500)
        n = body.get("max_tokens") or self.tokens
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        if not body.get("stream"):
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                while self.gate is not None and not self.gate.is_set():
                    await asyncio.sleep(0.005)
                await asyncio.sleep(self.delay_s * n)
            finally:
                self.active -= 1
            msg = {"role": "assistant", "content": "x" * n}
            return JSONResponse(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "message": msg, "finish_reason": "length"}],
                    "usage": usage,
                }
            )

        async def events() -> AsyncIterator[bytes]:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                for i in range(n):
                    if self.mode == "midstream" and i == 2:
                        raise RuntimeError("upstream dies mid-stream")
                    await asyncio.sleep(self.delay_s)
                    chunk = {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
                    }
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    last = {"id": "c1", "object": "chat.completion.chunk", "created": 0,
                            "model": body["model"], "choices": [], "usage": usage}  # fmt: skip
                    yield b"data: " + json.dumps(last).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.active -= 1

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def fake() -> Iterator[tuple[FakeUpstream, str]]:
    up = FakeUpstream()
    with serving(up.app) as url:
        yield up, url


def gateway_config(url: str, **kw: Any) -> GatewayConfig:
    backend = Backend(
        name="fake", kind="vllm", url=url, models=["m"], concurrency=kw.pop("concurrency", 4)
    )
    return GatewayConfig(backends=[backend], policy=kw.pop("policy", "gittins"), **kw)


@contextmanager
def gateway(url: str, runs: list[AppRun] | None = None, **kw: Any) -> Iterator[tuple[Gateway, str]]:
    gw = Gateway(gateway_config(url, **kw), on_run=None if runs is None else runs.append)
    with serving(gw.app) as base:
        yield gw, base


def client(base: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="k", default_headers=headers, max_retries=0)


def test_chat_unary_and_streaming_through_the_official_client(
    fake: tuple[FakeUpstream, str],
) -> None:
    up, url = fake
    runs: list[AppRun] = []
    with gateway(url, runs) as (_gw, base):
        with client(
            base, **{"x-hermes-app-id": "a1", "x-hermes-app-type": "t", "x-hermes-stage": "s1"}
        ) as c:
            r = c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
            assert r.choices[0].message.content == "xxx"
            assert r.usage is not None
            assert r.usage.completion_tokens == 3
            chunks = list(
                c.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=5,
                    stream=True,
                )
            )
            # The gateway asked upstream for usage, and strips it: this client did not ask.
            assert up.seen[-1]["stream_options"] == {"include_usage": True}
            assert len(chunks) == 5
            assert all(ch.usage is None for ch in chunks)
            with_usage = list(
                c.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=2,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert with_usage[-1].usage is not None
            assert with_usage[-1].usage.completion_tokens == 2
            assert isinstance(up.seen[0]["priority"], int)  # the rank, as vLLM's priority
            models = c.models.list()
            assert [m.id for m in models.data] == ["m"]
        resp = httpx.post(base + "/v1/apps/a1/finish")
        assert resp.status_code == 200
        metrics = httpx.get(base + "/metrics").text
        assert 'hermes_app_completion_time_seconds_count{app_type="t"} 1.0' in metrics
        assert "hermes_generation_tokens_total 10.0" in metrics
    assert len(runs) == 1
    assert [len(s.calls) for s in runs[0].stages] == [3]
    assert sorted(c.completion_tokens for c in runs[0].stages[0].llm_calls()) == [2, 3, 5]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b'{"model": 3, "messages": []}', {}, 400, "'model' is required"),
        (b'{"model": "m", "messages": "hi"}', {}, 400, "'messages' must be"),
        (b'{"model": "m", "messages": [{}], "stream": "yes"}', {}, 400, "'stream' must be"),
        (b'{"model": "m", "messages": [{}], "max_tokens": 0}', {}, 400, "'max_tokens' must be"),
        (b'{"model": "zz", "messages": [{}]}', {}, 404, "model 'zz' is not served"),
        (
            b'{"model": "m", "messages": [{}]}',
            {"x-hermes-slo-class": "x"},
            400,
            "x-hermes-slo-class",
        ),
        (b"x" * 5000, {}, 413, "limit"),
    ],
)
def test_bad_requests_get_clear_errors(
    fake: tuple[FakeUpstream, str], body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    _, url = fake
    with gateway(url, max_body_bytes=4096) as (_, base):
        r = httpx.post(base + "/v1/chat/completions", content=body, headers=headers)
        assert r.status_code == status
        assert message in r.json()["error"]["message"]


def test_auth_tokens(fake: tuple[FakeUpstream, str]) -> None:
    _, url = fake
    with gateway(url, api_key="secret", admin_key="root") as (_, base):
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        assert httpx.post(base + "/v1/chat/completions", json=body).status_code == 401
        ok = httpx.post(
            base + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer secret"}
        )
        assert ok.status_code == 200
        ev = {"event": "stage_started", "stage": "search"}
        assert (
            httpx.post(
                base + "/v1/apps/a/events", json=ev, headers={"Authorization": "Bearer secret"}
            ).status_code
            == 401
        )
        assert (
            httpx.post(
                base + "/v1/apps/a/events", json=ev, headers={"Authorization": "Bearer root"}
            ).status_code
            == 200
        )


def test_upstream_failures_become_explicit_errors(fake: tuple[FakeUpstream, str]) -> None:
    up, url = fake
    with gateway(url) as (gw, base):
        up.mode = "500"
        r = httpx.post(
            base + "/v1/chat/completions", json={"model": "m", "messages": [{"content": "x"}]}
        )
        assert r.status_code == 502
        up.mode = "midstream"
        body = {"model": "m", "messages": [{"content": "x"}], "stream": True, "max_tokens": 5}
        text = httpx.post(base + "/v1/chat/completions", json=body).text
        assert text.count('"delta"') == 2
        assert '"type": "upstream_error"' in text
        assert gw.dispatcher.running == 0
        assert gw.dispatcher.queued == 0
    with gateway("http://127.0.0.1:9") as (gw, base):  # nothing listens there
        r = httpx.post(
            base + "/v1/chat/completions", json={"model": "m", "messages": [{"content": "x"}]}
        )
        assert r.status_code == 502
        assert "upstream unavailable" in r.json()["error"]["message"]
        assert gw.dispatcher.running == 0


def test_calls_queue_in_the_gateway_and_the_shortest_application_goes_first(
    fake: tuple[FakeUpstream, str],
) -> None:
    """With one slot, srjf-like order: a short call queued after a long one runs first."""
    up, url = fake
    up.delay_s = 0.02
    with gateway(url, concurrency=1, policy="plas") as (gw, base):
        done: list[str] = []

        def call(app: str, tokens: int) -> None:
            with client(base, **{"x-hermes-app-id": app}) as c:
                c.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "q"}], max_tokens=tokens
                )
            done.append(app)

        def wait_for(what: str, ok: Any) -> None:  # steps, not timings: holds on a busy machine
            deadline = time.monotonic() + 30
            while not ok():
                assert time.monotonic() < deadline, f"never {what}"
                time.sleep(0.005)

        # A long-running app has attained service; plas serves the fresh app first.
        call("old", 2)
        up.gate = threading.Event()  # the blocker holds the one slot until released
        first = threading.Thread(target=call, args=("blocker", 10))
        first.start()
        wait_for("the blocker in the engine", lambda: up.active == 1)
        t_old = threading.Thread(target=call, args=("old", 2))
        t_new = threading.Thread(target=call, args=("new", 2))
        t_old.start()
        wait_for("old queued", lambda: gw.dispatcher.queued == 1)
        t_new.start()
        wait_for("new queued", lambda: gw.dispatcher.queued == 2)
        up.gate.set()
        for t in (first, t_old, t_new):
            t.join()
        assert up.peak == 1
        assert done.index("new") < done.index("old", 1)
        assert gw.dispatcher.running == 0


def test_finished_applications_are_learned_and_survive_a_restart(
    fake: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    _, url = fake
    cfg = gateway_config(url, run_store=str(tmp_path / "runs.sqlite"))
    gw = build_gateway(cfg)
    with serving(gw.app) as base:
        for run in range(3):
            heads = {"x-hermes-app-id": f"r{run}", "x-hermes-app-type": "agent"}
            with client(base, **heads, **{"x-hermes-stage": "plan"}) as c:
                c.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "q"}], max_tokens=2
                )
            ev = {"event": "stage_started", "stage": "search", "backend": "web"}
            assert httpx.post(base + f"/v1/apps/r{run}/events", json=ev).status_code == 200
            ev["event"] = "stage_finished"
            assert httpx.post(base + f"/v1/apps/r{run}/events", json=ev).status_code == 200
            assert httpx.post(base + f"/v1/apps/r{run}/events", json=ev).status_code == 409
            assert httpx.post(base + f"/v1/apps/r{run}/finish").status_code == 200
        assert httpx.post(base + "/v1/apps/r0/finish").status_code == 404
        assert gw.graphs["agent"].runs_seen == 3
    again = build_gateway(cfg)
    assert again.store is not None
    assert again.store.count() == 3
    graph = again.graphs["agent"]
    assert set(graph.nodes) == {"plan", "search"}
    assert graph.nodes["search"].backend == "web"
    assert again.store.runs()[0].run_id == "r0"
    again.store.close()
