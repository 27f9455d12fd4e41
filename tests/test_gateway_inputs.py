"""Bad input gets a 400 that says what and where, never a 500: content parts of the wrong type,
JSON nested beyond what the parser can read; events are checked before they make an
application; application ids holding '/' can be finished; the router's own 404 and 405 and a
bug's 500 are OpenAI-shaped."""

from __future__ import annotations

import httpx
import pytest

from test_gateway_errors import openai_error
from test_gateway_server import FakeUpstream, fake, gateway  # noqa: F401

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "text", "text": 5}], "messages[0].content[0].text"),
        ([{"type": "text", "text": None}], "messages[0].content[0].text"),
        ([{"type": "text", "text": ["a"]}], "messages[0].content[0].text"),
        (["just a string"], "messages[0].content[0]"),
        (5, "messages[0].content"),
        ({"text": "x"}, "messages[0].content"),
    ],
)
def test_content_of_the_wrong_type_is_a_400_naming_it(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    content: object,
    param: str,
) -> None:
    _, url = fake
    with gateway(url) as (_, base):
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        err = openai_error(httpx.post(base + CHAT, json=body), 400, "invalid_request_error")
        assert err["param"] == param
        ok = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text",
              "text": "fine"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}  # fmt: skip
        assert httpx.post(base + CHAT, json=ok).status_code == 200


def test_json_nested_beyond_reading_is_a_400(fake: tuple[FakeUpstream, str]) -> None:  # noqa: F811
    _, url = fake
    deep = b"[" * 100_000 + b"]" * 100_000
    with gateway(url) as (gw, base):
        for path in (CHAT, "/v1/completions", "/v1/apps/a/events"):
            r = httpx.post(base + path, content=deep, timeout=30)
            err = openai_error(r, 400, "invalid_request_error")
            assert err["message"] == "the body's JSON nests too deeply to read"
        assert not gw.tracker.apps


def test_events_are_checked_before_they_make_an_application(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    with gateway(url) as (gw, base):
        finished = {"event": "stage_finished", "stage": "s"}
        r = httpx.post(base + "/v1/apps/a/events", json=finished)
        assert (
            "no application in progress" in openai_error(r, 409, "invalid_request_error")["message"]
        )
        bad = {"event": "stage_started", "stage": "s", "deadline_ms": -1}
        openai_error(httpx.post(base + "/v1/apps/a/events", json=bad), 400, "invalid_request_error")
        bad = {"event": "stage_started", "stage": "s", "app_type": "no spaces"}
        openai_error(httpx.post(base + "/v1/apps/a/events", json=bad), 400, "invalid_request_error")
        r = httpx.post(base + "/v1/apps/-bad/events", json={"event": "stage_started", "stage": "s"})
        assert "x-hermes-app-id" in openai_error(r, 400, "invalid_request_error")["message"]
        assert not gw.tracker.apps


def test_an_application_id_with_slashes_can_be_finished(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    with gateway(url) as (gw, base):
        heads = {"x-hermes-app-id": "team/run/7"}
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(base + CHAT, json=body, headers=heads).status_code == 200
        ev = {"event": "stage_started", "stage": "s"}
        assert httpx.post(base + "/v1/apps/team/run/7/events", json=ev).status_code == 200
        ev["event"] = "stage_finished"
        assert httpx.post(base + "/v1/apps/team/run/7/events", json=ev).status_code == 200
        assert httpx.post(base + "/v1/apps/team/run/7/finish").status_code == 200
        assert not gw.tracker.apps


def test_the_routers_errors_and_a_bugs_are_openai_shaped(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    with gateway(url) as (gw, base):
        openai_error(httpx.get(base + "/nowhere"), 404, "not_found_error")
        openai_error(httpx.delete(base + CHAT), 405, "invalid_request_error")
        openai_error(httpx.get(base + "/v1/apps/a/finish"), 405, "invalid_request_error")

        def broken(*args: object) -> None:
            raise RuntimeError("a bug")

        gw.tracker.app_for = broken  # type: ignore[method-assign, assignment]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        err = openai_error(
            httpx.post(base + CHAT, json=body, headers={"x-hermes-app-id": "a"}),
            500,
            "server_error",
        )
        assert "a bug" not in err["message"]
