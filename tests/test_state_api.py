"""`GET /v1/hermes/state`: upstreams, the queue in rank order, applications in flight with
their predicted remaining demand, the graphs learned, recent histograms; bounded, and behind
the admin key when one is set."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from hermes.gateway.apps import AppTracker
from hermes.gateway.config import GatewayConfig, emulated_default
from hermes.gateway.context import CallContext
from hermes.gateway.dispatch import Dispatcher, Upstream
from hermes.gateway.state_api import RecentHistogram, parse_top, queue
from hermes.gateway.tenants import ApiKey, Keyring
from hermes.testing.gateway_thread import gateway_in_thread

MODEL = "llama-2-7b"
STATE = "/v1/hermes/state"


def tags(app_id: str, stage: str, app_type: str = "qa") -> dict[str, str]:
    return {"x-hermes-app-id": app_id, "x-hermes-app-type": app_type, "x-hermes-stage": stage}


def chat(base: str, headers: dict[str, str], max_tokens: int = 2) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": max_tokens,
    }
    return httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def run_one_app(base: str, app_id: str, auth: dict[str, str] | None = None) -> None:
    """A two-stage application of type qa, finished: its graph is learned."""
    auth = auth or {}
    assert chat(base, {**auth, **tags(app_id, "plan")}).status_code == 200
    assert chat(base, {**auth, **tags(app_id, "answer")}).status_code == 200
    assert httpx.post(f"{base}/v1/apps/{app_id}/finish", headers=auth).status_code == 200


@contextmanager
def streaming(base: str, headers: dict[str, str]) -> Iterator[None]:
    """A long streaming call, in flight (its first event read) until the block ends."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": 2000,
        "stream": True,
    }
    with (
        httpx.Client(timeout=60) as c,
        c.stream("POST", base + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        chunks = r.iter_bytes()  # kept: a dropped iterator closes the response
        next(chunks)  # the call has begun upstream
        yield


def slow(**kw: Any) -> GatewayConfig:
    return emulated_default(port=0, time_scale=10.0).model_copy(update=kw)


def test_state_shows_upstreams_apps_in_flight_graphs_and_histograms() -> None:
    with gateway_in_thread(slow()) as (_, base):
        run_one_app(base, "warm-1")
        with streaming(base, tags("live-1", "plan")):
            state = httpx.get(base + STATE).json()
        (up,) = state["upstreams"]
        assert up["name"] == "emulated-0"
        assert up["healthy"] is True
        assert up["in_flight"] == 1
        assert up["limit"] >= 1
        assert up["admission"]["kind"] == "auto"  # the default concurrency
        engine = up["engine"]  # what the emulator's vLLM-style /metrics said, once scraped
        assert engine is None or set(engine) == {"running", "waiting", "kv_usage"}
        apps = {a["app_id"]: a for a in state["apps"]["apps"]}
        live = apps["live-1"]
        assert (live["app_type"], live["stage"], live["in_flight"]) == ("qa", "plan", 1)
        # Its graph knows the stage: plan, then answer, then the end.
        assert live["predicted_remaining_s"] is not None
        assert live["predicted_remaining_s"] > 0
        (graph,) = state["graphs"]
        assert graph["app_type"] == "qa"
        assert graph["runs_seen"] == 1
        edges = {(e["source"], e["target"]): e["p"] for e in graph["edges"]}
        assert edges == {
            ("<start>", "plan"): 1.0,
            ("plan", "answer"): 1.0,
            ("answer", "<end>"): 1.0,
        }
        act = state["histograms"]["act_s"]
        assert act["total"] == 1
        assert sum(act["counts"]) == 1
        assert act["upper_bounds"][-1] == "+Inf"
        assert state["queue"] == {"count": 0, "calls": []}


def test_the_queue_is_listed_in_rank_order_and_cut_to_top() -> None:
    d = Dispatcher([Upstream("u", frozenset({"m"}), 1)])
    tracker = AppTracker()
    ranks = {"busy": 0.0, "c": 3.0, "a": 1.0, "b": 2.0, "rt": 9.0}
    for name, rank in ranks.items():
        app, _ = tracker.app_for(CallContext(name, "t", "s", None, None, None), 0.0)
        ticket = tracker.start_call(app, "s", 10, 0.0)
        d.submit(ticket, "m", rank, rt=name == "rt", now=0.0)
    listed = queue(d, now=2.5, top=3)
    assert listed["count"] == 4  # "busy" got the one slot
    # Real-time first, then best-effort by rank.
    assert [c["app_id"] for c in listed["calls"]] == ["rt", "a", "b"]
    assert listed["calls"][0]["slo_class"] == "rt"
    assert listed["calls"][1]["waited_s"] == 2.5


def test_recent_histograms_forget_what_is_older_than_the_window() -> None:
    h = Histogram("x_seconds", "x", buckets=(1.0, 10.0), registry=CollectorRegistry())
    recent = RecentHistogram(h, started_s=0.0, window_s=10.0)
    h.observe(0.5)
    assert recent.view(0.0)["counts"] == [1, 0, 0]
    recent.view(5.0)
    h.observe(5.0)
    view = recent.view(12.0)  # the base is the snapshot of t=0 still: both seen
    assert view["counts"] == [1, 1, 0]
    h.observe(50.0)
    view = recent.view(16.0)  # the base is now t=5's: only what came after it
    assert view["counts"] == [0, 1, 1]
    assert view["span_s"] == 11.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 5.0), st.lists(st.floats(0.0, 20.0), max_size=4)),
        min_size=1,
        max_size=30,
    ),
    st.floats(1.0, 20.0),
)
def test_a_recent_histogram_counts_exactly_what_came_after_its_base(
    steps: list[tuple[float, list[float]]], window_s: float
) -> None:
    """Polls `gap` apart with observations between them: each view counts exactly the
    observations after the time its span starts at, never a negative count, and its span is
    at least the window unless it starts at the beginning."""
    h = Histogram("y_seconds", "y", buckets=(1.0, 5.0), registry=CollectorRegistry())
    recent = RecentHistogram(h, started_s=0.0, window_s=window_s)
    now = 0.0
    seen: list[tuple[float, float]] = []  # (time observed, value)
    for gap, values in steps:
        for v in values:
            h.observe(v)
            seen.append((now + gap / 2, v))
        now += gap
        view = recent.view(now)
        since = now - view["span_s"]
        after = [v for t, v in seen if t > since + 1e-6]
        assert view["total"] == len(after)
        assert min(view["counts"], default=0) >= 0
        assert view["counts"] == [
            sum(v <= 1.0 for v in after),
            sum(1.0 < v <= 5.0 for v in after),
            sum(v > 5.0 for v in after),
        ]
        assert view["span_s"] >= window_s - 0.001 or since <= 0.001


@pytest.mark.parametrize("bad", ["0", "-1", "x", "1001", "²"])
def test_a_bad_top_is_refused_with_its_name(bad: str) -> None:
    with pytest.raises(Exception, match="query parameter top"):
        parse_top(bad)
    assert parse_top("7") == 7


def test_the_state_takes_the_admin_key() -> None:
    keys = Keyring([ApiKey(name="alice", key="a")], admin_key="root")
    assert keys.caller("admin", "Bearer root") is not None
    assert keys.caller("admin", "Bearer a") is None  # a tenant sees no one else's apps
    assert keys.caller("admin", None) is None
    # Only tenants' keys: closed to all; no key at all: open; the legacy key where no admin.
    assert Keyring([ApiKey(name="alice", key="a")]).caller("admin", "Bearer a") is None
    assert Keyring([]).caller("admin", None) is not None
    assert Keyring([], api_key="k").caller("admin", "Bearer k") is not None
    with gateway_in_thread(slow(admin_key="root", api_key="k")) as (_, base):
        assert httpx.get(base + STATE).status_code == 401
        assert httpx.get(base + STATE, headers={"Authorization": "Bearer k"}).status_code == 401
        r = httpx.get(base + STATE, headers={"Authorization": "Bearer root"})
        assert r.status_code == 200
        assert r.json()["upstreams"][0]["name"] == "emulated-0"
        r = httpx.get(base + STATE + "?top=x", headers={"Authorization": "Bearer root"})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "top"
        # The page itself holds no data: served to anyone, without inline code.
        page = httpx.get(base + "/dashboard")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert httpx.get(base + "/dashboard/dashboard.js").status_code == 200
        assert httpx.get(base + "/dashboard/../config.py").status_code == 404
        assert httpx.get(base + "/", follow_redirects=False).headers["location"] == "/dashboard"


def test_the_state_is_read_while_calls_come_and_go() -> None:
    """Polling during traffic answers every time (the state is read on the event loop)."""
    with gateway_in_thread(emulated_default(port=0, time_scale=0.05)) as (_, base):
        errors: list[int] = []

        def traffic() -> None:
            for i in range(6):
                r = chat(base, tags(f"t-{i}", "plan"))
                if r.status_code != 200:
                    errors.append(r.status_code)

        t = threading.Thread(target=traffic)
        t.start()
        while t.is_alive():
            assert httpx.get(base + STATE).status_code == 200
        t.join()
        assert errors == []
