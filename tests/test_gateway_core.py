"""The gateway's pure parts: header context, the policy-ordered dispatcher, the app tracker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.core.runs import LLMCall, ToolCall
from hermes.gateway.apps import AppTracker
from hermes.gateway.context import HeaderError, parse_context
from hermes.gateway.dispatch import Dispatcher, QueueFullError, Upstream
from hermes.gateway.upstream import engine_priority


def test_context_from_headers() -> None:
    ctx = parse_context(
        {
            "x-hermes-app-id": "run-7",
            "x-hermes-app-type": "react_alfw",
            "x-hermes-stage": "thought",
            "x-hermes-deadline-ms": "1500",
            "x-hermes-slo-class": "rt",
        }
    )
    assert (ctx.app_id, ctx.app_type, ctx.stage) == ("run-7", "react_alfw", "thought")
    assert ctx.deadline_ms == 1500.0
    assert ctx.slo_class == "rt"
    bare = parse_context({})
    assert (bare.app_id, bare.app_type, bare.stage, bare.deadline_ms) == (
        None,
        "default",
        "llm",
        None,
    )


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-hermes-app-id": "bad id!"}, "header x-hermes-app-id: 'bad id!' is not a name"),
        ({"x-hermes-app-id": "a", "x-hermes-deadline-ms": "soon"}, "x-hermes-deadline-ms: 'soon'"),
        ({"x-hermes-app-id": "a", "x-hermes-deadline-ms": "-5"}, "not a positive number"),
        ({"x-hermes-app-id": "a", "x-hermes-deadline-ms": "nan"}, "not a positive number"),
        ({"x-hermes-slo-class": "gold"}, "x-hermes-slo-class: 'gold' is not 'rt' or 'be'"),
        ({"x-hermes-stage": "map"}, "need x-hermes-app-id"),
    ],
)
def test_bad_headers_are_named(headers: dict[str, str], message: str) -> None:
    with pytest.raises(HeaderError, match=message.replace("(", r"\(")):
        parse_context(headers)


def test_engine_priority_by_kind() -> None:
    assert engine_priority("vllm", 1.2345) == 1234
    assert engine_priority("sglang", 1.2345) == -1234  # SGLang runs higher values first
    assert engine_priority("llamacpp", 1.0) is None
    assert engine_priority("vllm", 1e300) == 2**62  # clipped to an integer vLLM accepts


def two_upstreams(c: int = 1) -> Dispatcher:
    return Dispatcher(
        [Upstream("a", frozenset({"m"}), c), Upstream("b", frozenset({"m", "n"}), c)], limit=5
    )


def test_dispatcher_fills_free_slots_then_serves_in_priority_order() -> None:
    d = two_upstreams()
    _, g1 = d.submit("x", "m", 5.0)
    _, g2 = d.submit("y", "m", 4.0)
    assert {g.upstream for g in g1 + g2} == {"a", "b"}
    _, none = d.submit("late-low", "m", 9.0)
    _, none2 = d.submit("late-high", "m", 1.0)
    assert none == []
    assert none2 == []
    assert d.queued == 2
    grants = d.release("a")
    assert [g.call.key for g in grants] == ["late-high"]
    assert [g.call.key for g in d.release("b")] == ["late-low"]
    assert d.queued == 0
    assert d.running == 2


def test_dispatcher_cancel_rerank_health_and_limit() -> None:
    d = two_upstreams()
    d.submit("busy1", "m", 0.0)
    d.submit("busy2", "m", 0.0)
    w1, _ = d.submit("w1", "m", 1.0)
    w2, _ = d.submit("w2", "m", 2.0)
    assert d.cancel(w1)
    assert not d.cancel(w1)
    d.rerank(lambda w: -10.0 if w.key == "w2" else 0.0)
    assert [g.call.key for g in d.release("a")] == ["w2"]
    assert not d.cancel(w2)  # already granted
    d.set_health("b", False)
    _w3, _ = d.submit("w3", "m", 0.0)
    assert d.release("b") == []  # an unhealthy upstream takes nothing new
    assert [g.call.key for g in d.set_health("b", True)] == ["w3"]
    for k in range(5):
        d.submit(f"q{k}", "m", 0.0)
    with pytest.raises(QueueFullError):
        d.submit("over", "m", 0.0)
    with pytest.raises(KeyError):
        d.submit("nobody", "x", 0.0)
    with pytest.raises(ValueError, match="without a call running"):
        Dispatcher([Upstream("a", frozenset({"m"}), 1)]).release("a")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.booleans()), min_size=1, max_size=60))
def test_dispatcher_grants_each_call_once_in_priority_order(
    calls: list[tuple[float, bool]],
) -> None:
    d = Dispatcher([Upstream("a", frozenset({"m"}), 1)], limit=10_000)
    _first, _ = d.submit("first", "m", 0.0)  # takes the only slot
    waiting = [d.submit(i, "m", p)[0] for i, (p, _) in enumerate(calls)]
    for w, (_, cancel) in zip(waiting, calls, strict=True):
        if cancel:
            d.cancel(w)
    order = []
    while True:
        grants = d.release("a")
        if not grants:
            break
        order += [g.call for g in grants]
    expected = sorted((w for w, (_, c) in zip(waiting, calls, strict=True) if not c),
                      key=lambda w: (w.priority, w.seq))  # fmt: skip
    assert order == expected
    assert d.queued == 0


def test_tracker_stages_calls_and_runs() -> None:
    t = AppTracker()
    ctx = parse_context(
        {"x-hermes-app-id": "r1", "x-hermes-app-type": "agent", "x-hermes-stage": "think"}
    )
    app, created = t.app_for(ctx, 0.0)
    assert created
    a = t.start_call(app, "think", 100, 0.0)
    assert app.view.stage is not None
    assert app.view.stage.name == "think"
    assert app.view.unfinished_calls == 1
    t.end_call(a, 120, 10, 1.0)
    assert app.view.total_attained_s > 0
    t.tool_started(app, "search", "web", 1.0)
    assert app.view.finished[-1].name == "think"
    assert app.view.stage is not None
    assert app.view.stage.kind == "tool"
    assert not t.tool_finished(app, "other", 1.5)
    assert t.tool_finished(app, "search", 3.0)
    b = t.start_call(app, "think", 200, 3.0)
    c = t.start_call(app, "think", 200, 3.0)
    assert app.view.unfinished_calls == 2
    t.end_call(b, 210, 5, 4.0)
    t.end_call(c, 205, 0, 4.0)  # produced nothing: not demand
    assert t.idle(4.5, 1.0) == []
    assert t.idle(6.0, 1.0) == [app]
    run = t.finish(app)
    assert run is not None
    assert run.app == "agent"
    assert run.run_id == "r1"
    assert [s.name for s in run.stages] == ["think", "search", "think"]
    assert run.stages[0].calls == (LLMCall(120, 10),)
    assert run.stages[1].calls == (ToolCall(2.0),)
    assert run.stages[2].calls == (LLMCall(210, 5),)
    assert "r1" not in t.apps


def test_tracker_deadlines_are_relative_to_the_first_call() -> None:
    t = AppTracker()
    ctx = parse_context({"x-hermes-app-id": "d", "x-hermes-deadline-ms": "2500"})
    app, _ = t.app_for(ctx, 10.0)
    assert app.view.deadline_s == 12.5
    anon, _ = t.app_for(parse_context({}), 0.0)
    assert anon.ephemeral
    assert anon.app_id.startswith("_call-")
