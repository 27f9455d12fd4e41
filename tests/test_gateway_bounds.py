"""Bounded state: whatever clients send, what the gateway holds for them has a bound.

| structure | bound | beyond it |
|---|---|---|
| applications in progress | `max_apps` | a new one: 429 |
| an application's calls and tool stages (its stages, its run) | `max_calls_per_app` | 409 |
| an application idle (an open tool stage included) | `app_idle_timeout_s` | finished |
| application types (metric series, demand graphs) | `max_app_types` | counted as `other` |
| stage names of a type's demand graph | `build.MAX_GRAPH_STAGES` | the run is not learned |
| runs waiting for the store | `run_store_pending_limit` | a finish: 503 (test_gateway_store) |
| calls waiting | `queue_limit` | 429 (test_gateway_faults) |
"""

from __future__ import annotations

import httpx
import pytest

from hermes.core.runs import AppRun, LLMCall, Stage
from hermes.gateway import build
from hermes.gateway.apps import OTHER_TYPE, AppLimits, AppTracker
from hermes.gateway.build import build_gateway
from hermes.gateway.context import CallContext
from hermes.gateway.server import Gateway
from hermes.testing.asgi_thread import serving
from test_gateway_server import FakeUpstream, fake, gateway, gateway_config  # noqa: F401
from test_gateway_store import run_app, scrape, wait_until

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def ctx(app_id: str, app_type: str = "agent") -> CallContext:
    return CallContext(app_id, app_type, "llm", None, None)


def test_applications_in_a_tool_stage_are_reaped_when_idle() -> None:
    t = AppTracker()
    for i in range(2000):
        app, _ = t.app_for(ctx(f"a{i}"), now=0.0)
        t.tool_started(app, "search", "web", now=0.0)
    busy, _ = t.app_for(ctx("busy"), now=0.0)
    t.start_call(busy, "plan", 10, now=0.0)  # an LLM call in flight keeps its application
    idle = t.idle(now=300.0, timeout_s=300.0)
    assert len(idle) == 2000
    assert busy not in idle
    assert not t.idle(now=299.0, timeout_s=300.0)


def test_open_tool_stages_do_not_keep_applications_in_memory(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    gw = Gateway(gateway_config(url, app_idle_timeout_s=0.05))
    gw.reap_period_s = 0.05
    with serving(gw.app) as base:
        ev = {"event": "stage_started", "stage": "search", "backend": "web"}
        for i in range(200):
            r = httpx.post(base + f"/v1/apps/t{i}/events", json=ev, timeout=30)
            assert r.status_code == 200
        wait_until(lambda: not gw.tracker.apps)
        # The reaper sets the gauge after its sweep: on a busy machine a scrape can fall
        # between the last application going and the gauge being set.
        wait_until(lambda: scrape(gw, "hermes_num_apps_active") == 0)


def test_applications_beyond_max_apps_are_refused_with_429(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    with gateway(url, max_apps=3) as (gw, base):
        for i in range(3):
            run_app(base, f"a{i}")
        heads = {"x-hermes-app-id": "a3"}
        r = httpx.post(base + CHAT, json=BODY, headers=heads, timeout=30)
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert "max_apps" in r.json()["error"]["message"]
        ev = {"event": "stage_started", "stage": "s"}
        assert httpx.post(base + "/v1/apps/a4/events", json=ev, timeout=30).status_code == 429
        assert httpx.post(base + CHAT, json=BODY, timeout=30).status_code == 429  # plain too
        run_app(base, "a0")  # an application in progress goes on
        assert httpx.post(base + "/v1/apps/a0/finish", timeout=30).status_code == 200
        run_app(base, "a3")  # room again
        assert len(gw.tracker.apps) == 3


def test_an_application_beyond_max_calls_per_app_gets_409(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    with gateway(url, max_calls_per_app=3) as (gw, base):
        run_app(base, "a", {"x-hermes-stage": "one"})
        ev = {"event": "stage_started", "stage": "tool"}
        assert httpx.post(base + "/v1/apps/a/events", json=ev, timeout=30).status_code == 200
        ev["event"] = "stage_finished"
        assert httpx.post(base + "/v1/apps/a/events", json=ev, timeout=30).status_code == 200
        run_app(base, "a", {"x-hermes-stage": "two"})
        heads = {"x-hermes-app-id": "a", "x-hermes-stage": "three"}
        r = httpx.post(base + CHAT, json=BODY, headers=heads, timeout=30)
        assert r.status_code == 409
        assert "max_calls_per_app" in r.json()["error"]["message"]
        ev = {"event": "stage_started", "stage": "tool2"}
        assert httpx.post(base + "/v1/apps/a/events", json=ev, timeout=30).status_code == 409
        assert gw.tracker.apps["a"].steps == 3
        assert gw.dispatcher.running == gw.dispatcher.queued == 0


def test_types_beyond_max_app_types_are_folded_into_other() -> None:
    t = AppTracker(limits=AppLimits(max_app_types=3))
    t.types.known.add("learned")  # a type with a graph from before counts
    types = [t.app_for(ctx(f"a{i}", f"type{i}"), 0.0)[0].app_type for i in range(3000)]
    assert types[:2] == ["type0", "type1"]
    assert set(types[2:]) == {OTHER_TYPE}
    assert t.folded == 2998
    assert t.app_for(ctx("b", "learned"), 0.0)[0].app_type == "learned"
    assert t.app_for(ctx("c", "type1"), 0.0)[0].app_type == "type1"


def test_many_client_types_make_a_bounded_number_of_series_and_graphs(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    gw = build_gateway(gateway_config(url, max_app_types=4))
    with serving(gw.app) as base:
        for i in range(300):
            heads = {"x-hermes-app-id": f"a{i}", "x-hermes-app-type": f"t{i}"}
            assert httpx.post(base + CHAT, json=BODY, headers=heads, timeout=30).is_success
            assert httpx.post(base + f"/v1/apps/a{i}/finish", timeout=30).is_success
        scraped = httpx.get(base + "/metrics", timeout=30).text
    types = {
        line.split('app_type="')[1].split('"')[0]
        for line in scraped.splitlines()
        if line.startswith("hermes_app_completion_time_seconds_count")
    }
    assert types == {"t0", "t1", "t2", "t3", OTHER_TYPE}
    assert set(gw.graphs) == types
    assert gw.graphs[OTHER_TYPE].runs_seen == 296
    assert scrape(gw, "hermes_app_types_folded_total") == 296


def test_a_graph_learns_a_bounded_number_of_stage_names(
    monkeypatch: pytest.MonkeyPatch,
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    _, url = fake
    monkeypatch.setattr(build, "MAX_GRAPH_STAGES", 3)
    gw = build_gateway(gateway_config(url))
    assert gw.on_run is not None

    def run(i: int, *names: str) -> AppRun:
        return AppRun("a", f"r{i}", tuple(Stage(n, "llm", "llm", (LLMCall(1, 1),)) for n in names))

    gw.on_run(run(0, "x", "y"))
    gw.on_run(run(1, "x", "z"))  # three names: still within the bound
    gw.on_run(run(2, "x", "w"))  # a fourth: not learned
    gw.on_run(run(3, "a", "b", "c", "d"))
    assert gw.graphs["a"].runs_seen == 2
    assert set(gw.graphs["a"].nodes) == {"x", "y", "z"}
    assert scrape(gw, "hermes_runs_not_learned_total", reason="too_many_stage_names") == 2
