"""Every error the gateway answers is OpenAI-shaped, `{"error": {"message", "type", "param",
"code"}}` with `code` the HTTP status: its own errors (one table), Starlette's 404 and 405, and
an unexpected exception's 500; auth and body limits answer as middleware, and calls refused
before they queue count as rejections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from hermes.gateway.context import HeaderError
from hermes.gateway.errors import (
    DOMAIN_ERRORS,
    ERRORS,
    ApiError,
    BadRequestError,
    PayloadTooLargeError,
    RateLimitError,
    UpstreamTimeoutError,
    error_response,
    sse_error,
)
from hermes.gateway.middleware import BodyLimit
from test_gateway_faults import metric
from test_gateway_server import FakeUpstream, fake, gateway  # noqa: F401

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def openai_error(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """The error of `r`, checked to be OpenAI-shaped with `status` and `kind`."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["type"]) == (status, kind)
    assert isinstance(err["message"], str)
    assert err["message"]
    return err


@pytest.fixture
def guarded(fake: tuple[FakeUpstream, str]) -> Iterator[tuple[Any, str]]:  # noqa: F811
    _, url = fake
    with gateway(url, api_key="secret", admin_key="root", max_body_bytes=4096) as served:
        yield served


AUTH = {"Authorization": "Bearer secret"}


def test_an_unknown_path_is_a_404(guarded: tuple[Any, str]) -> None:
    _, base = guarded
    err = openai_error(httpx.post(base + "/v1/nope", json={}), 404, "not_found_error")
    assert err["message"] == "Not Found: POST /v1/nope"


def test_a_method_a_route_does_not_take_is_a_405(guarded: tuple[Any, str]) -> None:
    gw, base = guarded
    r = httpx.get(base + CHAT, headers=AUTH)
    err = openai_error(r, 405, "invalid_request_error")
    assert "Method Not Allowed" in err["message"]
    assert r.headers["allow"] == "POST"
    assert metric(gw, "hermes_request_rejections_total") == 0  # the router's, not a call's


def test_a_missing_or_wrong_token_is_a_401_counted_as_a_rejection(
    guarded: tuple[Any, str],
) -> None:
    gw, base = guarded
    openai_error(httpx.post(base + CHAT, json=BODY), 401, "authentication_error")
    wrong = {"Authorization": "Bearer nope"}
    openai_error(httpx.post(base + CHAT, json=BODY, headers=wrong), 401, "authentication_error")
    openai_error(httpx.get(base + "/v1/models"), 401, "authentication_error")
    event = {"event": "stage_started", "stage": "s"}
    r = httpx.post(base + "/v1/apps/a/events", json=event, headers=AUTH)  # not the admin's
    openai_error(r, 401, "authentication_error")
    assert metric(gw, "hermes_request_rejections_total", reason="401") == 2  # the two calls
    assert httpx.get(base + "/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(base + "/healthz").status_code == 200  # no token needed


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(guarded: tuple[Any, str]) -> None:
    gw, base = guarded
    big = b'{"model": "m", "messages": [{"content": "' + b"x" * 5000 + b'"}]}'
    err = openai_error(
        httpx.post(base + CHAT, content=big, headers=AUTH), 413, "invalid_request_error"
    )
    assert err["message"] == f"the body is {len(big)} bytes; the limit is 4096"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield big[:3000]
        yield big[3000:]

    err = openai_error(
        httpx.post(base + CHAT, content=chunks(), headers=AUTH), 413, "invalid_request_error"
    )
    assert err["message"] == "the body exceeds the limit of 4096 bytes"
    assert metric(gw, "hermes_request_rejections_total", reason="413") == 2
    # The limit holds for events too, not for a finish (which has no body to read).
    event = b'{"event": "stage_started", "stage": "' + b"s" * 5000 + b'"}'
    admin = {"Authorization": "Bearer root"}
    r = httpx.post(base + "/v1/apps/a/events", content=event, headers=admin)
    openai_error(r, 413, "invalid_request_error")


def test_the_gateways_own_errors_name_the_field(guarded: tuple[Any, str]) -> None:
    gw, base = guarded
    r = httpx.post(base + CHAT, json={**BODY, "max_tokens": 0}, headers=AUTH)
    err = openai_error(r, 400, "invalid_request_error")
    assert err["param"] == "max_tokens"
    r = httpx.post(base + CHAT, json={**BODY, "model": "zz"}, headers=AUTH)
    assert openai_error(r, 404, "not_found_error")["param"] == "model"
    r = httpx.post(base + CHAT, json=BODY, headers={**AUTH, "x-hermes-slo-class": "gold"})
    assert "x-hermes-slo-class" in openai_error(r, 400, "invalid_request_error")["message"]
    admin = {"Authorization": "Bearer root"}
    r = httpx.post(base + "/v1/apps/nobody/finish", headers=admin)
    openai_error(r, 404, "not_found_error")
    finished = {"event": "stage_finished", "stage": "s"}
    r = httpx.post(base + "/v1/apps/a/events", json=finished, headers=admin)
    openai_error(r, 409, "invalid_request_error")
    assert metric(gw, "hermes_request_rejections_total", reason="400") == 2
    assert metric(gw, "hermes_request_rejections_total", reason="404") == 1  # not the finish


def test_an_exception_in_a_handler_is_an_openai_shaped_500(guarded: tuple[Any, str]) -> None:
    gw, base = guarded

    def broken() -> bytes:
        raise RuntimeError("a bug")

    gw.metrics.render = broken
    err = openai_error(httpx.get(base + "/metrics", headers=AUTH), 500, "server_error")
    assert "a bug" not in err["message"]  # details go to the log, not to clients


def test_the_table_answers_every_error_class() -> None:
    for cls, kind in ERRORS.items():
        exc = HeaderError("x-hermes-deadline-ms: no") if cls is HeaderError else cls("why")
        assert isinstance(exc, (ApiError, *DOMAIN_ERRORS))
        r = error_response(exc)
        assert r.status_code == kind.status
        assert bytes(r.body).startswith(b'{"error":{"message":')
    assert error_response(RateLimitError("full")).headers["retry-after"] == "1"
    assert "retry-after" not in error_response(BadRequestError("no")).headers
    event = sse_error(UpstreamTimeoutError("slow"))
    assert event == (
        b'data: {"error": {"message": "slow", "type": "upstream_timeout", "param": null, '
        b'"code": 504}}\n\n'
    )


def test_body_limit_refuses_a_malformed_content_length() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not reached")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "http", "headers": [(b"content-length", b"12x")]}
    with pytest.raises(BadRequestError, match="bad Content-Length header '12x'"):
        asyncio.run(BodyLimit(app, 100)(scope, receive, send))

    async def reads_all(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass

    async def body() -> AsyncIterator[Message]:
        for _ in range(3):
            yield {"type": "http.request", "body": b"x" * 40, "more_body": True}

    parts = body()

    async def stream() -> Message:
        return await anext(parts)

    with pytest.raises(PayloadTooLargeError, match="exceeds the limit of 100 bytes"):
        asyncio.run(BodyLimit(reads_all, 100)({"type": "http", "headers": []}, stream, send))
