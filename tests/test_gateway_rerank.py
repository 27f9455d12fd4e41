"""The gateway's ranking round: one batched `rank_apps` over the applications with calls
waiting, giving each call the rank its own `priority` would; per call where a policy ranks an
application's calls apart."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import learn
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.gateway.apps import CallTicket, GatewayApp, _StageLog
from hermes.gateway.calls import Call
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.server import Gateway
from hermes.policies.base import AppView, BasePolicy, CallInfo, Policy, PolicyContext
from hermes.policies.registry import make_policy
from hermes.profiles import load_profile
from hermes.workloads.templates import generate_runs


def _queued(policy: Policy, views: list[AppView], calls_each: int) -> Gateway:
    """A gateway whose one slot is taken, with `calls_each` calls of every view waiting."""
    config = GatewayConfig(
        policy=policy.name,
        backends=[Backend(name="u", url="http://127.0.0.1:1", models=["m"], concurrency=1)],
    )
    gw = Gateway(config, policy)

    def call(view: AppView, k: int) -> Call:
        app = GatewayApp(str(view.app_id), view.app, view)
        info = CallInfo((view.app_id, k), float(k), 100)
        return Call(CallTicket(app, _StageLog("llm", "llm", "llm"), info), "m", {}, 0.0)

    gw.calls.enqueue(call(AppView("running", "default", 0.0), 0), 0.0)
    for v in views:
        # The calls of one application share its GatewayApp, as the tracker's do.
        first = call(v, 0)
        gw.calls.enqueue(first, 0.0)
        for k in range(1, calls_each):
            c = call(v, k)
            c.ticket = CallTicket(first.ticket.app, c.ticket.stage, c.ticket.info)
            gw.calls.enqueue(c, 0.0)
    return gw


def _priorities(gw: Gateway, policy: Policy) -> list[tuple[float, float]]:
    """(rank the round gave, the call's own priority) for every waiting call."""
    out = []
    for w in gw.dispatcher.waiting():
        t = gw.calls.of(w).ticket
        out.append((w.priority, policy.priority(t.info, t.app.view, 0.0)))
    return out


def test_gittins_round_is_batched_and_equals_each_calls_priority() -> None:
    cost = EngineDemandCost(load_profile("llama-2-7b", "a100"))
    runs = generate_runs("factool_code", 60, seed=1)
    models = {a: DemandModel(g, cost) for a, g in learn(runs).items()}
    policy = make_policy("gittins", PolicyContext(models, cost, samples=200, seed=0))
    batches: list[int] = []
    rank_apps = policy.rank_apps

    def counted(apps: Sequence[AppView], now: float) -> list[float] | None:
        batches.append(len(apps))
        return rank_apps(apps, now)

    policy.rank_apps = counted  # type: ignore[method-assign]
    views = []
    for i, run in enumerate(runs[:12]):
        pos = i % len(run.stages)
        while run.stages[pos].kind != "llm":
            pos -= 1
        v = AppView(f"a{i}", run.app, 0.0, stage_index=pos, stage=run.stages[pos])
        v.finished = list(run.stages[:pos])
        v.unfinished_calls = 2
        v.attained_s = 0.05 * i
        views.append(v)

    async def main() -> list[tuple[float, float]]:
        gw = _queued(policy, views, calls_each=2)
        gw.rerank()
        return _priorities(gw, policy)

    pairs = asyncio.run(main())
    assert batches == [12]  # one round, one entry per application, not per call
    assert len(pairs) == 24
    assert len({got for got, _ in pairs}) > 1
    for got, want in pairs:
        assert got == pytest.approx(want, rel=1e-12)


class _PerCall(BasePolicy):
    """Dynamic, and ranks an application's calls apart: no batched round."""

    name = "per-call"
    dynamic = True

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        return -call.arrival_s


def test_round_falls_back_to_each_calls_priority() -> None:
    policy = _PerCall()

    async def main() -> list[tuple[float, float]]:
        gw = _queued(policy, [AppView(f"a{i}", "default", 0.0) for i in range(3)], calls_each=3)
        gw.rerank()
        return _priorities(gw, policy)

    pairs = asyncio.run(main())
    assert sorted(got for got, _ in pairs) == [-2.0] * 3 + [-1.0] * 3 + [0.0] * 3
    assert all(got == want for got, want in pairs)
