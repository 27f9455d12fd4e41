"""Serve-deployment upstreams (`url: serve://APP/DEPLOYMENT`) without Ray: the ingress calls
a stand-in for the `DeploymentHandle` in-process, which runs the emulator deployment's class
(`HermesEmulator`, Ray Serve LLM's call shape). The official openai client, plain and
streaming; what the deployment is given (method, session id, priority, usage asked for);
errors before and after the first item; the config's checks."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

with warnings.catch_warnings():  # Ray's own deprecations, at its import
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("ray.serve")

from hermes.cli import app as cli
from hermes.gateway.config import Backend, GatewayConfig
from hermes.ray_serve.emulator_deployment import HermesEmulator
from hermes.ray_serve.local import LocalRayGateway
from hermes.ray_serve.serve_upstream import ServeUpstreams, error_of, sse_bytes
from hermes.testing.asgi_thread import serving
from hermes.testing.grant_order import wait_until
from openai_checks import streamed_completion

HEADS = {"x-hermes-app-id": "a1", "x-hermes-app-type": "demo", "x-hermes-stage": "ask"}


class _Answer:
    """A `DeploymentResponseGenerator`'s stand-in: items as the method yields them."""

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self.items = items
        self.cancelled = False

    def __aiter__(self) -> _Answer:
        return self

    async def __anext__(self) -> Any:
        return await self.items.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class StandIn:
    """A `DeploymentHandle`'s stand-in for `deployment`, recording each call's options and
    arguments."""

    def __init__(self, deployment: Any, calls: list[tuple[dict[str, Any], Any]]) -> None:
        self.deployment = deployment
        self.calls = calls
        self.opts: dict[str, Any] = {}

    def options(self, **opts: Any) -> StandIn:
        other = type(self)(self.deployment, self.calls)
        other.opts = {**self.opts, **opts}
        return other

    def remote(self, request: Any, raw_request_info: Any) -> _Answer:
        self.calls.append((self.opts, request))
        return _Answer(getattr(self.deployment, self.opts["method_name"])(request))


def config(url: str = "serve://llm/HermesEmulator", concurrency: int = 4) -> GatewayConfig:
    backend = Backend(name="d0", kind="emulated", url=url, models=["m"], concurrency=concurrency)
    return GatewayConfig(port=0, policy="gittins", backends=[backend])


@contextlib.contextmanager
def gateway(deployment: Any) -> Iterator[tuple[str, LocalRayGateway, list[Any]]]:
    calls: list[tuple[dict[str, Any], Any]] = []
    targets: list[tuple[str, str]] = []

    def handle_for(app: str, name: str) -> StandIn:
        targets.append((app, name))
        return StandIn(deployment, calls)

    gw = LocalRayGateway(config(), replicas=2, serve_handles=handle_for)
    with serving(gw) as base:
        yield base, gw, calls
    assert set(targets) <= {("llm", "HermesEmulator")}


def released(gw: LocalRayGateway) -> None:
    """Every call's release has reached the scheduler (releases go in the next batch)."""
    wait_until(lambda: gw.core.stats()["running"] == 0, what="calls released")


def test_the_official_client_through_a_deployment_plain_and_streaming() -> None:
    emulator = HermesEmulator(["m"], time_scale=0.02, replica="emu-0")
    with (
        gateway(emulator) as (base, gw, calls),
        openai.OpenAI(base_url=base + "/v1", api_key="-", default_headers=HEADS) as c,
    ):
        r = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello " * 40}], max_tokens=6
        )
        assert r.usage is not None
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (60, 6)
        assert r.system_fingerprint == "emu-0"  # the deployment's answer, relayed whole
        chunks = streamed_completion(c)
        assert chunks[-1].usage.prompt_tokens == 100
        # Usage not asked for: the usage-only event the ingress asked for is not relayed.
        plain = list(c.completions.create(model="m", prompt="y", max_tokens=3, stream=True))
        assert len(plain) == 3
        assert all(ch.usage is None for ch in plain)
        assert {ch.system_fingerprint for ch in plain} == {"emu-0"}
        released(gw)
        assert gw.core.stats()["queued"] == 0
        # The usage of all three calls was accounted (6 + 5 + 3 tokens made).
        text = httpx.get(base + "/metrics").text
        assert "hermes_generation_tokens_total 14.0" in text
    (chat_opts, chat_req), (cmpl_opts, _), (_, plain_req) = calls
    assert chat_opts == {"stream": True, "method_name": "chat", "session_id": "a1"}
    assert cmpl_opts["method_name"] == "completions"
    assert isinstance(chat_req["priority"], int)  # the rank, as the engine's priority
    assert "stream_options" not in chat_req
    assert plain_req["stream_options"] == {"include_usage": True}  # asked for, to account it


class _Failing:
    """A deployment that fails before its first item (`chat`) or mid-stream (`completions`)."""

    async def chat(self, request: Any) -> AsyncIterator[Any]:
        raise RuntimeError("ActorDiedError: the replica died")
        yield  # an async generator

    async def completions(self, request: Any) -> AsyncIterator[Any]:
        yield ['data: {"choices": [{"index": 0, "text": "a"}]}\n\n']
        raise RuntimeError("the replica died mid-stream")


def test_errors_before_and_after_the_first_item() -> None:
    with gateway(_Failing()) as (base, gw, _):
        chat: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        r = httpx.post(base + "/v1/chat/completions", json=chat, headers=HEADS)
        assert r.status_code == 502
        assert "ActorDiedError" in r.json()["error"]["message"]
        body = {"model": "m", "prompt": "x", "stream": True}
        r = httpx.post(base + "/v1/completions", json=body, headers=HEADS)
        assert r.status_code == 200  # the stream had begun
        events = [e for e in r.text.split("\n\n") if e]
        assert events[0] == 'data: {"choices": [{"index": 0, "text": "a"}]}'
        assert "mid-stream" in events[1]
        assert '"code": 502' in events[1]
        released(gw)  # both


def test_an_engine_error_answer_keeps_its_status() -> None:
    """The emulator deployment refuses a context overflow with Ray Serve LLM's error shape;
    the client gets its status and message in OpenAI's."""
    emulator = HermesEmulator(["m"], time_scale=0.02, replica="emu-0")
    with gateway(emulator) as (base, gw, _):
        body: dict[str, Any] = {"model": "m", "prompt": "x", "max_tokens": 10**6}
        for stream in (False, True):
            r = httpx.post(base + "/v1/completions", json={**body, "stream": stream})
            assert r.status_code == 400
            assert "maximum context length" in r.json()["error"]["message"]
        released(gw)


def test_the_shapes_ray_serve_llm_yields() -> None:
    class Chunk:  # a pydantic-like stream chunk
        def model_dump_json(self) -> str:
            return '{"choices": []}'

    assert sse_bytes(["data: {}\n\n", "data: [DONE]\n\n"]) == b"data: {}\n\ndata: [DONE]\n\n"
    assert sse_bytes([Chunk(), {"a": 1}]) == b'data: {"choices": []}\n\ndata: {"a": 1}\n\n'
    assert error_of({"error": {"message": "no", "type": "BadRequest", "code": 400}}) == (
        400,
        "BadRequest",
        "no",
    )
    assert error_of({"object": "error", "message": "x", "code": "weird"}) == (
        500,
        "upstream_error",
        "x",
    )
    assert error_of({"choices": [], "error": None}) is None
    assert error_of(["data: {}\n\n"]) is None


def test_serve_urls_are_checked(tmp_path: Path) -> None:
    for url, why in [
        ("serve://llm", "serve://APP/DEPLOYMENT"),
        ("serve://llm/a/b", "serve://APP/DEPLOYMENT"),
        ("serve:///d", "serve://APP/DEPLOYMENT"),
    ]:
        with pytest.raises(ValidationError, match=why):
            Backend(name="d", url=url, models=["m"], concurrency=4)
    with pytest.raises(ValidationError, match="whole-number concurrency"):
        Backend(name="d", url="serve://llm/d", models=["m"])
    with pytest.raises(ValueError, match="backends d0 are Ray Serve deployments"):
        ServeUpstreams(config(), {}, None)
    # The single-process gateway has no handles: it refuses them.
    path = tmp_path / "gw.yaml"
    path.write_text(
        "backends:\n  - name: d0\n    url: serve://llm/E\n    models: [m]\n    concurrency: 2\n"
    )
    res = CliRunner().invoke(cli, ["serve", "--config", str(path)])
    assert res.exit_code == 2
    assert "Ray Serve deployments (serve://): they need --ray" in res.output


def test_a_client_that_leaves_mid_stream_cancels_the_deployment_call() -> None:
    answers: list[_Answer] = []

    class Endless:
        async def completions(self, request: Any) -> AsyncIterator[Any]:
            while True:
                yield ['data: {"choices": [{"index": 0, "text": "a"}]}\n\n']
                await asyncio.sleep(0.01)

    class Recording(StandIn):
        def remote(self, request: Any, raw_request_info: Any) -> _Answer:
            answers.append(super().remote(request, raw_request_info))
            return answers[-1]

    gw = LocalRayGateway(config(), serve_handles=lambda a, n: Recording(Endless(), []))
    with serving(gw) as base:
        body = {"model": "m", "prompt": "x", "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            next(r.iter_bytes())
        released(gw)
        assert answers[0].cancelled
