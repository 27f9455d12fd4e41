"""Stage indices (`x-hermes-stage-index`, the events' `stage_index`) keep consecutive stages of
one name apart; and tool events that are an application's first sight carry its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hermes.client import HermesApp, app_headers
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.gateway.apps import AppTracker
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.context import STAGE_INDEX, HeaderError, parse_context
from hermes.gateway.server import Gateway
from hermes.replay import LLMStep, ReplaySettings, ToolStep, plan, replay
from hermes.testing.asgi_thread import serving

# The tracker ---------------------------------------------------------------------------------


def _stages(indices: list[int | None]) -> list[str]:
    """The stage names of the run recorded from consecutive "think" calls at `indices`."""
    t = AppTracker()
    app, _ = t.app_for(parse_context({"x-hermes-app-id": "a", "x-hermes-app-type": "t"}), 0.0)
    for k, index in enumerate(indices):
        ticket = t.start_call(app, "think", 10, float(k), index)
        t.end_call(ticket, 10, 3, k + 0.5)
    run = t.finish(app)
    assert run is not None
    return [s.name for s in run.stages]


def test_consecutive_calls_of_one_stage_name_split_by_index() -> None:
    assert _stages([0, 1]) == ["think", "think"]
    assert _stages([None, None]) == ["think"]  # as before: merged by name
    assert _stages([0, 0, 1]) == ["think", "think"]  # a fan-out shares its index


def test_tool_events_carry_the_index_too() -> None:
    t = AppTracker()
    app, _ = t.app_for(parse_context({"x-hermes-app-id": "a"}), 0.0)
    t.tool_started(app, "search", "web", 0.0, 0)
    assert not t.tool_finished(app, "search", 1.0, 1)  # not the stage in progress
    assert t.tool_finished(app, "search", 1.0, 0)
    t.tool_started(app, "search", "web", 1.0, 1)
    assert t.tool_finished(app, "search", 2.0)  # without an index: by name, as before
    # An LLM stage after them, at index 2, then at 3 under the same name.
    for index in (2, 3):
        t.end_call(t.start_call(app, "think", 10, 2.0, index), 10, 1, 3.0)
    run = t.finish(app)
    assert run is not None
    assert [s.name for s in run.stages] == ["search", "search", "think", "think"]


# Headers -------------------------------------------------------------------------------------


def test_the_stage_index_header_is_parsed() -> None:
    ctx = parse_context({"x-hermes-app-id": "a", STAGE_INDEX: "12"})
    assert ctx.stage_index == 12
    assert parse_context({"x-hermes-app-id": "a"}).stage_index is None
    assert app_headers("a", stage="s", stage_index=3)[STAGE_INDEX] == "3"


@pytest.mark.parametrize("value", ["-1", "+1", "1.0", " 1", "1_0", "x", "", "1234567", "٣"])
def test_a_bad_stage_index_is_named(value: str) -> None:
    with pytest.raises(HeaderError, match=f"header {STAGE_INDEX}: .* not a non-negative integer"):
        parse_context({"x-hermes-app-id": "a", STAGE_INDEX: value})


def test_the_stage_index_needs_an_app_id() -> None:
    with pytest.raises(HeaderError, match="need x-hermes-app-id"):
        parse_context({STAGE_INDEX: "0"})


# The replay plan -----------------------------------------------------------------------------


def _loop_run(run_id: str = "r0", deadline_s: float | None = None) -> AppRun:
    """An agent that thinks twice in a row between tool calls."""
    think = Stage("think", "llm", "llm", (LLMCall(20, 2),))
    search = Stage("search", "tool", "web", (ToolCall(0.1),))
    return AppRun("agent", run_id, (search, think, think, search, think), deadline_s=deadline_s)


def test_replay_steps_carry_their_stage_index() -> None:
    [a] = plan([_loop_run()], 1.0, default_model="m")
    indices = [
        int(s.headers[STAGE_INDEX]) if isinstance(s, LLMStep) else s.stage_index for s in a.steps
    ]
    assert indices == [0, 1, 2, 3, 4]
    assert isinstance(a.steps[0], ToolStep)
    assert all(parse_context(s.headers).stage_index is not None
               for s in a.steps if isinstance(s, LLMStep))  # fmt: skip


# Over HTTP -----------------------------------------------------------------------------------


def _fake_upstream() -> Starlette:
    """An OpenAI-style engine that answers every chat call at once with `max_tokens` tokens."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        n = body.get("max_tokens") or 2
        msg = {"role": "assistant", "content": "x" * n}
        return JSONResponse(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": msg, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n},
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextmanager
def _gateway(runs: list[AppRun]) -> Iterator[tuple[Gateway, str]]:
    with serving(_fake_upstream()) as url:
        backend = Backend(name="fake", kind="vllm", url=url, models=["m"], concurrency=4)
        gw = Gateway(GatewayConfig(backends=[backend]), on_run=runs.append)
        with serving(gw.app) as base:
            yield gw, base


def _think(c: Any) -> None:
    c.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}], max_tokens=2)


def test_indexed_calls_over_http_become_two_stages() -> None:
    runs: list[AppRun] = []
    with _gateway(runs) as (_, base):
        for index in ("0", "1"):
            heads = {"x-hermes-app-id": "a1", "x-hermes-stage": "think", STAGE_INDEX: index}
            with openai.OpenAI(base_url=base + "/v1", api_key="-", default_headers=heads) as c:
                _think(c)
        assert httpx.post(base + "/v1/apps/a1/finish").status_code == 200
    [run] = runs
    assert [(s.name, len(s.calls)) for s in run.stages] == [("think", 1), ("think", 1)]


def test_the_client_helper_sends_stage_indices() -> None:
    runs: list[AppRun] = []
    with _gateway(runs) as (_, base), openai.OpenAI(base_url=base + "/v1", api_key="-") as c:
        app = HermesApp(c, app_type="loop")
        with app.tool("search", backend="web"):
            pass
        _think(app.llm("think"))
        _think(app.llm("think"))
        with app.tool("search", backend="web"):
            pass
        with app.tool("search", backend="web"):
            pass
        app.finish()
    [run] = runs
    assert [s.name for s in run.stages] == ["search", "think", "think", "search", "search"]


def test_a_replay_keeps_consecutive_stages_apart() -> None:
    runs: list[AppRun] = []
    with _gateway(runs) as (_, base):
        settings = ReplaySettings(base, rate_per_s=100.0, time_scale=0.1)
        summary = asyncio.run(replay([_loop_run(deadline_s=60.0)], settings))
    assert (summary["apps"], summary["failed"], summary["errors"]) == (1, 0, {})
    [run] = runs
    assert [s.name for s in run.stages] == ["search", "think", "think", "search", "think"]


@pytest.mark.parametrize("index", [-1, 1.5, "2", True])
def test_a_bad_stage_index_in_an_event_is_refused(index: object) -> None:
    with _gateway([]) as (_, base):
        ev = {"event": "stage_started", "stage": "search", "stage_index": index}
        r = httpx.post(base + "/v1/apps/a/events", json=ev)
    assert r.status_code == 400
    assert "'stage_index' must be a non-negative integer" in r.json()["error"]["message"]


def test_an_event_with_another_index_does_not_finish_the_stage() -> None:
    with _gateway([]) as (_, base):
        ev: dict[str, Any] = {"event": "stage_started", "stage": "search", "stage_index": 0}
        assert httpx.post(base + "/v1/apps/a/events", json=ev).status_code == 200
        ev["event"] = "stage_finished"
        ev["stage_index"] = 1
        assert httpx.post(base + "/v1/apps/a/events", json=ev).status_code == 409
        ev["stage_index"] = 0
        assert httpx.post(base + "/v1/apps/a/events", json=ev).status_code == 200


# An application first seen through a tool event ----------------------------------------------


def test_a_first_tool_event_sets_the_deadline_and_slo_class() -> None:
    with _gateway([]) as (gw, base):
        ev = {
            "event": "stage_started",
            "stage": "search",
            "app_type": "agent",
            "deadline_ms": 2500,
            "slo_class": "rt",
        }
        assert httpx.post(base + "/v1/apps/d1/events", json=ev).status_code == 200
        assert httpx.post(base + "/v1/apps/d2/events", json=ev | {"deadline_ms": None}).is_success
        app, plain = gw.tracker.apps["d1"], gw.tracker.apps["d2"]
        assert app.app_type == "agent"
        assert app.view.deadline_s == pytest.approx(app.view.arrival_s + 2.5)
        assert plain.view.deadline_s is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("deadline_ms", 0, "x-hermes-deadline-ms: '0' is not a positive number"),
        ("deadline_ms", "soon", "x-hermes-deadline-ms: 'soon' is not a positive number"),
        ("deadline_ms", True, "x-hermes-deadline-ms: 'True' is not a positive number"),
        ("slo_class", "gold", "x-hermes-slo-class: 'gold' is not 'rt' or 'be'"),
    ],
)
def test_a_bad_deadline_or_slo_class_in_an_event_is_refused(
    field: str, value: object, message: str
) -> None:
    with _gateway([]) as (gw, base):
        ev = {"event": "stage_started", "stage": "search", field: value}
        r = httpx.post(base + "/v1/apps/a/events", json=ev)
        assert r.status_code == 400
        assert message in r.json()["error"]["message"]
        assert "a" not in gw.tracker.apps
