"""The emulated engine and its OpenAI-compatible app, driven by the official `openai` client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import openai
import pytest
import uvicorn

from hermes.emulator import (
    EmulatedEngine,
    EmulatorError,
    RequestRejectedError,
    emulator_app,
    filler_token,
    prompt_tokens_for_text,
)
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest
from hermes.engine.scheduler import Engine
from hermes.profiles import load_profile

MODEL = load_profile("llama-2-7b", "a100", None)
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def predict(prompt: int, output: int, config: EngineConfig | None = None) -> EngineRequest:
    """One request alone on an idle engine, stepped in model time."""
    engine = Engine(MODEL, config, decode_runs=False)
    req = EngineRequest("x", prompt, output, 0.0)
    engine.add(req, 0.0)
    now = 0.0
    while (step := engine.plan(now)) is not None:
        engine.complete(step)
        now = step.end_s
    return req


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until `cond` holds; a guard against a hang, loose enough for a busy machine (an abort
    that did not happen still shows: the requests it is used on take ~19 s to run out)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# A server on a free port, in a thread -----------------------------------------------------------


@dataclass
class Server:
    url: str
    engines: dict[str, EmulatedEngine]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    engines = {
        "fast": EmulatedEngine(MODEL, time_scale=0.02),
        "timed": EmulatedEngine(MODEL, time_scale=1.0),
        "single": EmulatedEngine(MODEL, EngineConfig(max_num_seqs=1), time_scale=0.2),
        "slow": EmulatedEngine(MODEL, EngineConfig(max_num_seqs=1), time_scale=1.0),
    }
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(emulator_app(engines), log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv.started, timeout=10.0)
        yield Server(f"http://127.0.0.1:{port}", engines)
    finally:
        uv.should_exit = True
        thread.join(10.0)
        sock.close()
    assert not thread.is_alive()
    assert all(e.idle for e in engines.values())


# The API over HTTP ------------------------------------------------------------------------------


def test_models_and_health(server: Server) -> None:
    with server.client() as client:
        assert sorted(m.id for m in client.models.list()) == sorted(server.engines)
    with httpx.Client() as http:
        assert http.get(server.url + "/health").status_code == 200


def test_chat_completion_counts_usage(server: Server) -> None:
    with server.client() as client:
        out = client.chat.completions.create(
            model="fast",
            messages=[
                {"role": "system", "content": "x" * 21},
                {"role": "user", "content": [{"type": "text", "text": "y" * 18}]},
            ],
            max_tokens=5,
            temperature=0.7,
            seed=3,
        )
    assert out.object == "chat.completion"
    assert out.id.startswith("chatcmpl-")
    assert out.model == "fast"
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content == "".join(filler_token(i) for i in range(5))
    assert out.usage is not None
    assert out.usage.prompt_tokens == prompt_tokens_for_text("x" * 39) == 10
    assert (out.usage.completion_tokens, out.usage.total_tokens) == (5, 15)


def test_completion_counts_token_ids_and_defaults_to_16_tokens(server: Server) -> None:
    with server.client() as client:
        out = client.completions.create(model="fast", prompt=[7] * 37)
        capped = client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=50,
            max_completion_tokens=3,
        )
    assert out.object == "text_completion"
    assert out.choices[0].text == "".join(filler_token(i) for i in range(16))
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (37, 16)
    assert capped.usage is not None
    assert capped.usage.completion_tokens == 3  # max_completion_tokens wins


def test_streaming_sends_one_chunk_per_token_then_usage(server: Server) -> None:
    with server.client() as client:
        chat = list(
            client.chat.completions.create(
                model="fast",
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=7,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = list(
            client.completions.create(model="fast", prompt="hello", max_tokens=4, stream=True)
        )
    assert len(chat) == 7 + 1
    assert all(c.object == "chat.completion.chunk" for c in chat)
    assert len({c.id for c in chat}) == 1
    assert chat[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chat[:-1]] == [filler_token(i) for i in range(7)]
    assert [c.choices[0].finish_reason for c in chat[:-1]] == [None] * 6 + ["length"]
    assert chat[-1].choices == []
    assert chat[-1].usage is not None
    assert (chat[-1].usage.prompt_tokens, chat[-1].usage.completion_tokens) == (3, 7)
    assert len(text) == 4  # no usage chunk unless asked
    assert [c.choices[0].text for c in text] == [filler_token(i) for i in range(4)]
    assert text[-1].choices[0].finish_reason == "length"


def test_raw_sse_framing(server: Server) -> None:
    body = {"model": "fast", "prompt": "a", "max_tokens": 2, "stream": True}
    with httpx.Client() as http:
        r = http.post(server.url + "/v1/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert len(events) == 2 + 2


def test_streaming_timing_follows_the_cost_model(server: Server) -> None:
    engine = server.engines["timed"]
    prompt, output = 2000, 24
    expect = predict(prompt, output)
    assert expect.first_token_s is not None
    assert expect.finish_s is not None
    scale = engine.time_scale

    async def go() -> tuple[float, float]:
        async with server.async_client() as client:
            await client.completions.create(model="fast", prompt="warm up", max_tokens=1)
            start = time.perf_counter()
            first = None
            stream = await client.completions.create(
                model="timed", prompt=[1] * prompt, max_tokens=output, stream=True
            )
            async for _ in stream:
                first = first or time.perf_counter()
            assert first is not None
            return first - start, time.perf_counter() - start

    ttft, total = run(go())
    want_ttft, want_total = expect.first_token_s * scale, expect.finish_s * scale
    # Never early. How late depends on the host's load (HTTP round trips, per-token overhead),
    # so no upper bound is asserted: the model-time figures are pinned exactly elsewhere.
    assert ttft >= want_ttft * 0.98
    assert total >= want_total * 0.98


def test_lower_priority_value_finishes_first(server: Server) -> None:
    engine = server.engines["single"]  # max_num_seqs=1: one request at a time

    async def go() -> list[str]:
        order: list[str] = []
        async with server.async_client() as client:

            async def call(name: str, priority: int, tokens: int) -> None:
                await client.chat.completions.create(
                    model="single",
                    messages=[{"role": "user", "content": name}],
                    max_tokens=tokens,
                    extra_body={"priority": priority},
                )
                order.append(name)

            async def until_outstanding(n: int) -> None:
                while engine.outstanding < n:
                    await asyncio.sleep(0.002)

            # ~0.2 s of wall time: long enough for the other two to queue behind it.
            blocker = asyncio.create_task(call("blocker", 0, 100))
            await asyncio.wait_for(until_outstanding(1), 30.0)
            late = asyncio.create_task(call("late", 5, 3))
            await asyncio.wait_for(until_outstanding(2), 30.0)
            urgent = asyncio.create_task(call("urgent", 1, 3))
            await asyncio.gather(blocker, late, urgent)
        return order

    assert run(go()) == ["blocker", "urgent", "late"]


def test_disconnect_while_streaming_aborts_the_request(server: Server) -> None:
    engine = server.engines["slow"]
    body = {"model": "slow", "prompt": "a", "max_tokens": 2000, "stream": True}
    with (
        httpx.Client() as http,
        http.stream("POST", server.url + "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert engine.outstanding == 1
    wait_until(lambda: engine.idle)  # within its 10 s guard: 2000 tokens would take ~19 s


def test_disconnect_while_queued_aborts_the_request(server: Server) -> None:
    engine = server.engines["slow"]
    body = {"model": "slow", "prompt": "a", "max_tokens": 2000, "stream": True}
    url = server.url + "/v1/completions"
    with httpx.Client() as http, http.stream("POST", url, json=body) as running:
        # Keep the iterator: dropping it mid-stream makes httpcore close the connection.
        lines = running.iter_lines()
        assert next(lines).startswith("data: ")
        with http.stream("POST", url, json=body) as queued:
            assert queued.status_code == 200  # headers go out at once, tokens later
            assert engine.outstanding == 2
        wait_until(lambda: engine.outstanding == 1)
        assert next(x for x in lines if x).startswith("data: ")  # the first one still runs
    wait_until(lambda: engine.idle)


def test_disconnect_without_streaming_aborts_the_request(server: Server) -> None:
    engine = server.engines["slow"]
    body = {"model": "slow", "prompt": "a", "max_tokens": 2000}
    with httpx.Client(timeout=0.2) as http, pytest.raises(httpx.ReadTimeout):
        http.post(server.url + "/v1/completions", json=body)
    wait_until(lambda: engine.idle)


def test_errors_with_the_openai_client(server: Server) -> None:
    with server.client() as client:
        with pytest.raises(openai.NotFoundError, match="`nope` does not exist"):
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError, match="maximum context length is 4096"):
            client.completions.create(model="fast", prompt=[1] * 4000, max_tokens=100)
        with pytest.raises(openai.BadRequestError, match="`max_tokens` must be an integer"):
            client.chat.completions.create(
                model="fast",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"max_tokens": "ten"},
            )
    assert server.engines["fast"].idle


# The API in process (httpx.ASGITransport) -----------------------------------------------------


def post_all(
    bodies: list[bytes | dict[str, Any]], path: str = "/v1/chat/completions"
) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with EmulatedEngine(MODEL, time_scale=0.01) as engine:
            app = emulator_app({"m": engine})
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://emu") as client:
                out = []
                for body in bodies:
                    if isinstance(body, bytes):
                        out.append(await client.post(path, content=body))
                    else:
                        out.append(await client.post(path, json=body))
                return out

    return run(go())


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    assert error["code"] == response.status_code
    return error


def test_malformed_requests_get_400_naming_the_problem() -> None:
    hi = [{"role": "user", "content": "hi"}]
    cases: list[tuple[bytes | dict[str, Any], str]] = [
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"messages": hi}, "`model` must be a string"),
        ({"model": "m"}, "`messages` must be a non-empty list"),
        ({"model": "m", "messages": [{"content": "x"}]}, "`messages[0].role`"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": "m", "messages": hi, "max_tokens": 0}, "`max_tokens` must be >= 1"),
        ({"model": "m", "messages": hi, "max_tokens": True}, "`max_tokens` must be an integer"),
        ({"model": "m", "messages": hi, "priority": 1.5}, "`priority` must be an integer"),
        ({"model": "m", "messages": hi, "stream": "yes"}, "`stream` must be a boolean"),
        ({"model": "m", "messages": hi, "n": 0}, "`n` must be between 1 and 128"),
        (
            {"model": "m", "messages": hi, "stream_options": {"include_usage": True}},
            "only be defined when `stream=True`",
        ),
    ]
    responses = post_all([body for body, _ in cases])
    for (_, needle), response in zip(cases, responses, strict=True):
        assert response.status_code == 400, needle
        error = error_of(response)
        assert error["type"] == "BadRequestError"
        assert needle in error["message"]


def test_completion_prompt_shapes() -> None:
    bodies: list[bytes | dict[str, Any]] = [
        {"model": "m", "prompt": ["abcdefghi"], "max_tokens": 1},
        {"model": "m", "prompt": [[5, 6, 7]], "max_tokens": 1},
        {"model": "m", "prompt": ["a", "b"]},
        {"model": "m", "prompt": []},
        {"model": "m", "prompt": 12},
        {"model": "nope", "prompt": "x"},
    ]
    ok9, ok3, batch, empty, number, unknown = post_all(bodies, "/v1/completions")
    assert ok9.json()["usage"]["prompt_tokens"] == 3
    assert ok3.json()["usage"]["prompt_tokens"] == 3
    for r in (batch, empty, number):
        assert r.status_code == 400
        assert "`prompt` must be" in error_of(r)["message"]
    assert unknown.status_code == 404
    assert error_of(unknown)["type"] == "NotFoundError"


# The engine shell -------------------------------------------------------------------------------


def test_engine_shell_timeline_equals_the_model() -> None:
    expect = predict(300, 6)

    async def go() -> None:
        async with EmulatedEngine(MODEL, time_scale=0.05) as engine:
            handle = engine.submit(300, 6)
            assert [i async for i in handle] == list(range(6))
            record = await handle.result()
            assert (record.prompt_tokens, record.completion_tokens) == (300, 6)
            assert record.finish_reason == "length"
            assert expect.first_token_s is not None
            assert expect.finish_s is not None
            assert record.ttft_s == pytest.approx(expect.first_token_s, rel=1e-9)
            assert record.latency_s == pytest.approx(expect.finish_s, rel=1e-9)
            assert engine.idle

    run(go())


def test_cancel_gives_the_requests_kv_blocks_back() -> None:
    """A request that needs all but one of the pool's blocks runs to its end once a cancelled
    one has given its blocks back (read through the engine's contract, not its pool)."""

    async def go() -> None:
        async with EmulatedEngine(MODEL, EngineConfig(num_gpu_blocks=70), time_scale=0.001) as e:
            a = e.submit(100, 1000)
            assert [await anext(a), await anext(a)] == [0, 1]
            assert e.cancel(a)
            b = e.submit(100, 1000)  # 69 blocks by its last token
            record = await asyncio.wait_for(b.result(), 30.0)  # a guard against a hang
            assert record.finish_reason == "length"
            assert record.completion_tokens == 1000

    run(go())


def test_cancel_ends_the_stream_and_frees_the_engine() -> None:
    async def go() -> None:
        async with EmulatedEngine(MODEL, time_scale=0.05) as engine:
            a = engine.submit(100, 1000)
            b = engine.submit(100, 1000, priority=1)
            got = [await anext(a), await anext(a)]
            assert got == [0, 1]
            assert engine.cancel(a)  # most likely mid-step
            assert not engine.cancel(a)
            assert [i async for i in a] == []
            record = a.record
            assert record is not None
            assert record.finish_reason == "abort"
            assert 2 <= record.completion_tokens < 1000
            assert engine.outstanding == 1
            await anext(b)
            assert engine.cancel(b)
            assert engine.idle
            c = engine.submit(10, 2)  # still serving
            assert [i async for i in c] == [0, 1]
            d = engine.submit(10, 1000)
        assert (await d.result()).finish_reason == "abort"  # closing aborts what is left
        with pytest.raises(EmulatorError, match="closed"):
            engine.submit(10, 2)

    run(go())


def test_submit_rejects_what_can_never_run() -> None:
    async def go() -> None:
        async with EmulatedEngine(MODEL, EngineConfig(max_model_len=512)) as engine:
            with pytest.raises(RequestRejectedError, match="max_model_len 512") as info:
                engine.submit(500, 13)
            assert (info.value.prompt_tokens, info.value.max_tokens) == (500, 13)
            assert engine.idle

    run(go())


def test_time_scale_must_be_positive() -> None:
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="time_scale"):
            EmulatedEngine(MODEL, time_scale=bad)


def test_sse_chunks_are_compact_json(server: Server) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "q"}], "stream": True}
    with httpx.Client() as http:
        r = http.post(server.url + "/v1/chat/completions", json=body | {"max_tokens": 1})
    first = json.loads(r.text.split("\n\n")[0].removeprefix("data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": filler_token(0)}


def test_an_engine_failure_fails_its_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    async def go() -> None:
        async with EmulatedEngine(MODEL, time_scale=0.01) as engine:
            app = emulator_app({"m": engine})
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://emu") as client:
                body = {"model": "m", "prompt": "a", "max_tokens": 3}
                ok = await client.post("/v1/completions", json=body)
                assert ok.status_code == 200
                monkeypatch.setattr(engine.engine, "complete", boom)
                streamed = await client.post("/v1/completions", json=body | {"stream": True})
                events = streamed.text.split("\n\n")
                assert "boom" in json.loads(events[0].removeprefix("data: "))["error"]["message"]
                assert events[-2] == "data: [DONE]"
                failed = await client.post("/v1/completions", json=body)
                assert failed.status_code == 500
                assert "emulated engine failed" in error_of(failed)["message"]
                wrong = await client.get("/v1/completions")
                assert wrong.status_code == 405
                assert wrong.headers["allow"] == "POST"
            with pytest.raises(EmulatorError, match="boom"):
                engine.submit(1, 1)

    run(go())
