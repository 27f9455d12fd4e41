"""A ranking round that re-ranks only the applications whose view changed since the last one
(`Dispatcher.rerank_groups`, for `view_ranked` policies) grants exactly what a round over every
waiting call grants, whatever the sequence of calls queued, ended and cancelled, tool stages,
finished applications (and graphs learning from them), aging and rounds."""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph, learn
from hermes.core.runs import AppRun
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.gateway.apps import CallTicket
from hermes.gateway.calls import Call
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.context import CallContext
from hermes.gateway.dispatch import Grant
from hermes.gateway.server import Gateway
from hermes.policies.base import PolicyContext
from hermes.policies.registry import make_policy
from hermes.profiles import load_profile
from hermes.workloads.templates import generate_runs

# Types with graphs (their LLM and tool stages), and one without (least attained service).
LLM_STAGES = {
    "factool_code": ("generate_queries", "generate_solutions"),
    "react_fever": ("thought",),
    "unknown": ("s0", "s1"),
}
TOOL_STAGES = {"factool_code": "code_execution", "react_fever": "search", "unknown": "t0"}
TYPES = tuple(LLM_STAGES)
APPS = 6
# lstf ranks by slack, which moves with time: it must keep re-ranking every call.
POLICIES = ("gittins", "srjf-mean", "plas", "vtc", "lstf")


@cache
def _training() -> dict[str, dict[str, Any]]:
    runs = generate_runs("factool_code", 30, seed=1) + generate_runs("react_fever", 30, seed=2)
    return {app: g.to_dict() for app, g in learn(runs).items()}


@cache
def _cost() -> EngineDemandCost:
    return EngineDemandCost(load_profile("llama-2-7b", "a100"))


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _gateway(policy_name: str, clock: _Clock, incremental: bool) -> tuple[Gateway, list[str]]:
    """A gateway as `build_gateway` makes one (graphs learning from every finished run), with
    3 slots on two upstreams; and the list its grants are written to, in order."""
    cost = _cost()
    graphs = {a: PDGraph.from_dict(d) for a, d in _training().items()}
    models = {a: DemandModel(g, cost) for a, g in graphs.items()}
    policy = make_policy(policy_name, PolicyContext(models, cost, samples=100, seed=0))

    def learn_run(run: AppRun) -> None:
        graph = graphs.get(run.app)
        if graph is None:
            graph = graphs[run.app] = PDGraph(run.app)
            models[run.app] = DemandModel(graph, cost)
        graph.observe(run)

    config = GatewayConfig(
        policy=policy_name,
        backends=[
            Backend(name="u0", url="http://127.0.0.1:1", models=["m"], concurrency=1),
            Backend(name="u1", url="http://127.0.0.1:1", models=["m"], concurrency=2),
        ],
        aging_max_wait_s=20.0,
    )
    gw = Gateway(config, policy, clock, learn_run, cost)
    gw.incremental_ranks = incremental
    granted: list[str] = []
    grant = gw.calls.grant

    def recording(grants: list[Grant]) -> None:
        for g in grants:
            t: CallTicket = g.call.key  # type: ignore[assignment]
            granted.append(f"{t.info.call_id} on {g.upstream}")
        grant(grants)

    gw.calls.grant = recording  # type: ignore[method-assign]
    return gw, granted


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, APPS - 1), st.integers(0, 1), st.integers(1, 3)),
        st.tuples(st.just("end"), st.integers(0, 20), st.integers(0, 400)),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.tuples(st.just("retry"), st.integers(0, 20)),
        st.tuples(st.just("tool"), st.integers(0, APPS - 1)),
        st.tuples(st.just("tool_end"), st.integers(0, APPS - 1)),
        st.tuples(st.just("finish"), st.integers(0, APPS - 1)),
        st.tuples(st.just("tick"), st.floats(0.0, 8.0)),
        st.tuples(st.just("tick"), st.floats(0.5, 8.0), st.just("round")),  # time, then a round
        st.just(("age",)),
        st.just(("round",)),
    ),
    min_size=10,
    max_size=60,
)


def _order(gw: Gateway) -> list[tuple[Any, ...]]:
    """The waiting calls in the order they would be granted, with their ranks."""
    waiting = sorted(gw.dispatcher.waiting(), key=lambda w: (w.rt, w.priority, w.seq))
    return [(w.key.info.call_id, w.priority) for w in waiting]  # type: ignore[attr-defined]


def _step(gw: Gateway, clock: _Clock, calls: list[Call], op: tuple[Any, ...]) -> None:
    now = clock.now
    kind = op[0]
    if kind == "call":
        i, stage, n = op[1:]
        app_type = TYPES[i % len(TYPES)]
        names = LLM_STAGES[app_type]
        deadline_ms = 5_000.0 * (1 + i) if i % 2 else None
        ctx = CallContext(f"a{i}", app_type, names[stage % len(names)], deadline_ms, None)
        for _ in range(n):  # a stage's calls in parallel
            calls.append(gw.admit(ctx, "m", 100 + 10 * len(calls)))
    elif kind in ("end", "cancel"):
        running = kind == "end"
        live = [c for c in calls if not c.ended and (c.upstream is not None) == running]
        if live:
            call = live[op[1] % len(live)]
            usage = {"prompt_tokens": 100, "completion_tokens": op[2]} if running else {}
            gw.calls.account(call, usage, "stop" if running else "abort")
    elif kind == "retry":  # as `CallLifecycle.retry_elsewhere` does: queued again, first
        running = [c for c in calls if c.upstream is not None and not c.retried]
        if running:
            call = running[op[1] % len(running)]
            assert call.upstream is not None
            gw.calls.release(call, call.upstream)
            call.retried = True
            call.future = asyncio.get_running_loop().create_future()
            gw.calls.enqueue(call, float("-inf"))
    elif kind in ("tool", "tool_end", "finish"):
        i = op[1]
        app = gw.tracker.apps.get(f"a{i}")
        tool = TOOL_STAGES[TYPES[i % len(TYPES)]]
        if app is None:
            return
        if kind == "tool":
            gw.tracker.tool_started(app, tool, "t", now)
        elif kind == "tool_end":
            gw.tracker.tool_finished(app, tool, now)
        elif app.in_flight == 0:
            assert gw.finisher.finish(app, now)
    elif kind == "tick":
        clock.now += op[1]
        if len(op) > 2:
            gw.rerank()
    elif kind == "age":
        gw.calls.age()
    else:
        gw.rerank()


def _run(policy: str, ops: list[tuple[Any, ...]], incremental: bool) -> list[Any]:
    """What each round left waiting (in grant order), and every grant in order."""

    async def main() -> list[Any]:
        clock = _Clock()
        gw, granted = _gateway(policy, clock, incremental)
        calls: list[Call] = []
        orders: list[Any] = []
        for op in ops:
            _step(gw, clock, calls, op)
            if op[-1] == "round":
                orders.append(_order(gw))
        gw.rerank()
        orders.append(_order(gw))
        return [orders, granted]

    return asyncio.run(main())


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=50, deadline=None)
@given(ops=_OPS)
def test_rounds_over_changed_apps_grant_what_full_rounds_grant(
    policy: str, ops: list[tuple[Any, ...]]
) -> None:
    assert _run(policy, ops, incremental=True) == _run(policy, ops, incremental=False)


def test_a_round_asks_only_for_the_apps_that_changed() -> None:
    """With nothing changed a round ranks nothing; a call that ended re-ranks its own
    application, no other."""

    async def main() -> None:
        gw, granted = _gateway("gittins", _Clock(), incremental=True)
        asked: list[list[str]] = []
        rank_apps = gw.policy.rank_apps

        def counted(apps: Any, now: float) -> list[float] | None:
            asked.append([str(a.app_id) for a in apps])
            return rank_apps(apps, now)

        gw.policy.rank_apps = counted  # type: ignore[method-assign]
        calls = []
        for i in range(5):  # two calls of each of 5 applications: 3 run, 7 wait
            for _ in range(2):
                ctx = CallContext(f"a{i}", "factool_code", "generate_queries", None, None)
                calls.append(gw.admit(ctx, "m", 100))
        assert [str(c.ticket.app.app_id) for c in calls if c.upstream] == ["a0", "a0", "a1"]
        gw.rerank()
        assert asked == [["a1", "a2", "a3", "a4"]]  # those with calls queued since
        gw.rerank()
        assert len(asked) == 1  # nothing changed: nothing ranked
        a0 = calls[0]
        gw.calls.account(a0, {"prompt_tokens": 100, "completion_tokens": 50}, "stop")
        assert len(granted) == 4  # the freed slot went to the best-ranked call
        gw.rerank()
        assert len(asked) == 1  # a0 changed, but no call of it waits
        gw.calls.account(calls[2], {"prompt_tokens": 100, "completion_tokens": 50}, "stop")
        gw.rerank()
        waiting = sorted({str(c.ticket.app.app_id) for c in calls if not (c.upstream or c.ended)})
        assert len(asked) == 1  # a1: no call of it waits now either
        assert len(waiting) >= 2
        ctx = CallContext(waiting[0], "factool_code", "generate_queries", None, None)
        calls.append(gw.admit(ctx, "m", 100))  # one application with calls waiting changes
        gw.rerank()
        assert asked[1:] == [[waiting[0]]]

    asyncio.run(main())


def test_slack_ranks_move_with_time_and_every_round_reranks_them() -> None:
    """lstf's ranks move with `now` alone: a round re-ranks calls whose application did not
    change (what `view_ranked = False` declares)."""

    async def main() -> tuple[list[Any], list[Any]]:
        clock = _Clock()
        gw, _ = _gateway("lstf", clock, incremental=True)
        for _ in range(5):  # 3 run, 2 wait
            gw.admit(CallContext("a1", "react_fever", "thought", 60_000.0, None), "m", 100)
        gw.rerank()
        before = _order(gw)
        clock.now += 2.0
        gw.rerank()
        return before, _order(gw)

    before, after = asyncio.run(main())
    assert len(before) == 2
    assert [rank for _, rank in after] == pytest.approx([rank - 2.0 for _, rank in before])
