"""Capacity-managed tool backends in the gateway: a `stage_started` event for a backend under
`tools` waits for a slot (or returns a grant to poll), granted in policy order; the stage's end,
the application's next stage, or a hold timeout gives the slot back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httpx
import pytest

from hermes.config_base import ConfigError
from hermes.core.runs import AppRun, ToolCall
from hermes.gateway.config import Backend, GatewayConfig, ToolCapacity, gateway_config_from_dict
from hermes.gateway.server import Gateway
from hermes.gateway.tool_grants import ToolGrants, ToolLimit
from hermes.policies.app_fifo import AppFIFO

# The pure queue --------------------------------------------------------------------------------


def test_grants_go_in_priority_order_within_capacity() -> None:
    g = ToolGrants([ToolLimit("sandbox", capacity=1)])
    a, made = g.ask("a", "sandbox", "sa", 3.0, 0.0)
    assert made == [a]
    assert (a.state, a.waited_s) == ("granted", 0.0)
    b, made = g.ask("b", "sandbox", "sb", 2.0, 1.0)
    c, _ = g.ask("c", "sandbox", "sc", 1.0, 2.0)
    assert made == []
    assert (g.position(c), g.position(b), g.position(a)) == (0, 1, None)
    assert (g.running("sandbox"), g.waiting("sandbox")) == (1, 2)
    assert g.release(a, 5.0) == [c]
    assert c.waited_s == 3.0
    assert g.release(c, 6.0) == [b]
    assert g.release(b, 7.0) == []
    assert g.release(b, 8.0) == []  # ended already: nothing
    assert [x.state for x in (a, b, c)] == ["released"] * 3
    assert g.get(a.id) is a  # ended grants stay visible for polling
    assert (g.running("sandbox"), g.waiting("sandbox")) == (0, 0)


def test_fifo_order_ignores_priorities_and_rerank() -> None:
    g = ToolGrants([ToolLimit("env", capacity=1, order="fifo")])
    a, _ = g.ask("a", "env", None, 9.0, 0.0)
    b, _ = g.ask("b", "env", None, 5.0, 1.0)
    c, _ = g.ask("c", "env", None, 1.0, 2.0)
    g.rerank(lambda x: -x.seq)
    assert g.release(a, 3.0) == [b]
    assert g.release(b, 4.0) == [c]


def test_a_waiting_grant_given_up_is_skipped_and_rerank_reorders() -> None:
    g = ToolGrants([ToolLimit("t", capacity=1)])
    a, _ = g.ask("a", "t", None, 0.0, 0.0)
    b, _ = g.ask("b", "t", None, 1.0, 0.0)
    g.ask("c", "t", None, 2.0, 0.0)
    d, _ = g.ask("d", "t", None, 3.0, 0.0)
    assert g.release(b, 1.0) == []  # still waiting: cancelled
    assert b.state == "cancelled"
    g.rerank(lambda x: {"c": 5.0, "d": 4.0}[str(x.app_id)])
    assert g.position(d) == 0
    assert g.release(a, 2.0) == [d]
    assert g.waiting("t") == 1


def test_release_app_keeps_the_current_stage_and_overdue_grants_are_found() -> None:
    g = ToolGrants([ToolLimit("t", capacity=2, hold_timeout_s=10.0)])
    old, _ = g.ask("a", "t", "stage-1", 0.0, 0.0)
    new, _ = g.ask("a", "t", "stage-2", 0.0, 1.0)
    assert g.release_app("a", 2.0, keep="stage-2") == []
    assert (old.state, new.state) == ("released", "granted")
    assert g.of_app("a") == [new]
    assert g.overdue(11.0) == []
    assert g.overdue(11.5) == [new]
    g.release(new, 12.0, "revoked")
    assert new.state == "revoked"
    assert g.of_app("a") == []


def test_equal_priorities_go_to_the_earlier_application_as_in_the_simulator() -> None:
    g = ToolGrants([ToolLimit("env", capacity=1)])
    a, _ = g.ask("a", "env", None, 1.0, 0.0, tiebreak=0.0)
    late, _ = g.ask("late", "env", None, 1.0, 1.0, tiebreak=9.0)  # asked first, arrived later
    early, _ = g.ask("early", "env", None, 1.0, 2.0, tiebreak=3.0)
    assert (g.position(early), g.position(late)) == (0, 1)
    g.rerank(lambda x: x.priority)  # a ranking round keeps the tie-breaks
    assert g.release(a, 3.0) == [early]
    fifo = ToolGrants([ToolLimit("env", capacity=1, order="fifo")])
    fifo.ask("a", "env", None, 1.0, 0.0)
    late, _ = fifo.ask("late", "env", None, 1.0, 1.0, tiebreak=9.0)
    fifo.ask("early", "env", None, 1.0, 2.0, tiebreak=3.0)
    assert fifo.position(late) == 0  # first come, first served


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="tool 't' is configured twice"):
        ToolGrants([ToolLimit("t", 1), ToolLimit("t", 2)])
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        ToolGrants([ToolLimit("t", 0)])
    g = ToolGrants([ToolLimit("t", 1)])
    with pytest.raises(KeyError):
        g.ask("a", "web", None, 0.0, 0.0)
    with pytest.raises(ValueError, match="priority and tiebreak must not be NaN"):
        g.ask("a", "t", None, float("nan"), 0.0)


def test_the_config_checks_tools() -> None:
    base: dict[str, Any] = {"backends": [{"name": "b", "url": "http://x", "models": ["m"]}]}
    cfg = gateway_config_from_dict({**base, "tools": [{"name": "sandbox", "capacity": 2}]})
    assert cfg.tools == [ToolCapacity(name="sandbox", capacity=2)]
    assert cfg.tools[0].order == "policy"
    with pytest.raises(ConfigError, match="tools: names must be unique"):
        gateway_config_from_dict({**base, "tools": [{"name": "s", "capacity": 1}] * 2})
    with pytest.raises(ConfigError, match=r"tools\[0\]\.capacity: Input should be greater"):
        gateway_config_from_dict({**base, "tools": [{"name": "s", "capacity": 0}]})
    with pytest.raises(ConfigError, match=r"tools\[0\]\.order: Input should be 'fifo' or"):
        gateway_config_from_dict({**base, "tools": [{"name": "s", "capacity": 1, "order": "x"}]})


# Over HTTP, in process ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _gateway(
    order: Literal["fifo", "policy"] = "policy", runs: list[AppRun] | None = None
) -> tuple[Gateway, _Clock]:
    clock = _Clock()
    cfg = GatewayConfig(
        backends=[Backend(name="b", url="http://127.0.0.1:9", models=["m"])],
        tools=[ToolCapacity(name="sandbox", capacity=1, order=order, hold_timeout_s=60.0)],
    )
    on_run = None if runs is None else runs.append
    return Gateway(cfg, policy=AppFIFO(), clock=clock, on_run=on_run), clock


Client = httpx.AsyncClient


def _drive(gw: Gateway, body: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=gw.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            await body(c)

    asyncio.run(main())


def _event(kind: str, stage: str, backend: str | None = None, **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"event": kind, "stage": stage, **extra}
    if backend is not None:
        ev["backend"] = backend
    return ev


@pytest.mark.parametrize(("order", "first"), [("policy", "b"), ("fifo", "c")])
def test_a_freed_slot_goes_by_the_policy_or_first_come(
    order: Literal["fifo", "policy"], first: str
) -> None:
    gw, clock = _gateway(order)
    seen: dict[str, Any] = {}

    async def body(c: Client) -> None:
        post = c.post
        # b arrives first (a step on an unmanaged backend), then a takes the one slot.
        assert (
            await post("/v1/apps/b/events", json=_event("stage_started", "s", "web"))
        ).is_success
        clock.t += 1
        r = await post("/v1/apps/a/events", json=_event("stage_started", "run", "sandbox"))
        assert r.status_code == 200
        assert r.json()["granted"] is True
        clock.t += 1  # c arrives and asks before b does
        r = await post(
            "/v1/apps/c/events", json=_event("stage_started", "run", "sandbox", wait=False)
        )
        assert r.status_code == 202
        c_grant = r.json()
        assert (c_grant["state"], c_grant["position"]) == ("waiting", 0)
        assert c_grant["poll"] == f"/v1/apps/c/grants/{c_grant['grant']}"
        clock.t += 1
        assert (await post("/v1/apps/b/events", json=_event("stage_finished", "s"))).is_success
        r = await post(
            "/v1/apps/b/events", json=_event("stage_started", "run", "sandbox", wait=False)
        )
        b_grant = r.json()
        assert b_grant["position"] == (0 if order == "policy" else 1)  # parrot: b came first
        clock.t += 1
        assert (await post("/v1/apps/a/events", json=_event("stage_finished", "run"))).is_success
        polls = {}
        for app, grant in (("b", b_grant), ("c", c_grant)):
            polls[app] = (await c.get(f"/v1/apps/{app}/grants/{grant['grant']}")).json()
        seen.update(polls)

    _drive(gw, body)
    assert seen[first]["state"] == "granted"
    assert seen[first]["waited_s"] > 0
    other = "c" if first == "b" else "b"
    assert (seen[other]["state"], seen[other]["position"]) == ("waiting", 0)


def test_a_waiting_event_is_answered_when_the_slot_frees_and_the_tool_is_timed_from_it() -> None:
    runs: list[AppRun] = []
    gw, clock = _gateway(runs=runs)
    out: dict[str, Any] = {}

    async def body(c: Client) -> None:
        await c.post("/v1/apps/a/events", json=_event("stage_started", "run", "sandbox"))
        clock.t = 110.0
        waiting = asyncio.ensure_future(
            c.post("/v1/apps/b/events", json=_event("stage_started", "run", "sandbox"))
        )
        while gw.tools.grants.waiting("sandbox") == 0:
            await asyncio.sleep(0.001)
        assert not waiting.done()
        clock.t = 115.0
        await c.post("/v1/apps/a/events", json=_event("stage_finished", "run"))
        r = await waiting
        out["b"] = (r.status_code, r.json())
        clock.t = 117.0
        assert (await c.post("/v1/apps/b/events", json=_event("stage_finished", "run"))).is_success
        assert (await c.post("/v1/apps/b/finish")).is_success
        metrics = (await c.get("/metrics")).text
        out["metrics"] = metrics

    _drive(gw, body)
    status, answer = out["b"]
    assert status == 200
    assert answer["granted"] is True
    assert answer["waited_s"] == pytest.approx(5.0)
    [run] = [r for r in runs if r.run_id == "b"]
    [stage] = run.stages
    assert stage.calls == (ToolCall(2.0),)  # from the grant at 115, not the event at 110
    assert 'hermes_tool_running{tool="sandbox"} 0.0' in out["metrics"]
    assert 'hermes_tool_wait_seconds_count{tool="sandbox"} 2.0' in out["metrics"]


def test_the_next_stage_gives_the_slot_back_and_a_waiter_given_up_hears_409() -> None:
    gw, _ = _gateway()
    out: dict[str, Any] = {}

    async def body(c: Client) -> None:
        await c.post("/v1/apps/a/events", json=_event("stage_started", "run", "sandbox"))
        r = await c.post(
            "/v1/apps/b/events", json=_event("stage_started", "run", "sandbox", wait=False)
        )
        b = r.json()["grant"]
        waiting = asyncio.ensure_future(
            c.post("/v1/apps/c/events", json=_event("stage_started", "run", "sandbox"))
        )
        while gw.tools.grants.waiting("sandbox") < 2:
            await asyncio.sleep(0.001)
        # c's stage ends before it got a slot (it gave up): its waiting event hears so.
        await c.post("/v1/apps/c/events", json=_event("stage_finished", "run"))
        r = await waiting
        out["c"] = (r.status_code, r.json()["state"])
        # a moves on to another (unmanaged) stage without stage_finished: its slot goes to b.
        await c.post("/v1/apps/a/events", json=_event("stage_started", "search", "web"))
        out["b"] = (await c.get(f"/v1/apps/b/grants/{b}")).json()["state"]

    _drive(gw, body)
    assert out == {"c": (409, "cancelled"), "b": "granted"}


def test_a_grant_held_too_long_is_revoked() -> None:
    gw, clock = _gateway()
    out: dict[str, Any] = {}

    async def body(c: Client) -> None:
        r = await c.post("/v1/apps/a/events", json=_event("stage_started", "run", "sandbox"))
        grant = r.json()["grant"]
        r = await c.post(
            "/v1/apps/b/events", json=_event("stage_started", "run", "sandbox", wait=False)
        )
        b = r.json()["grant"]
        clock.t += 61.0
        gw._reap_idle_apps()
        out["a"] = (await c.get(f"/v1/apps/a/grants/{grant}")).json()["state"]
        out["b"] = (await c.get(f"/v1/apps/b/grants/{b}")).json()["state"]

    _drive(gw, body)
    assert out == {"a": "revoked", "b": "granted"}


def test_bad_requests_about_grants() -> None:
    gw, _ = _gateway()
    out: dict[str, Any] = {}

    async def body(c: Client) -> None:
        r = await c.post(
            "/v1/apps/a/events", json=_event("stage_started", "run", "sandbox", wait=1)
        )
        out["wait"] = (r.status_code, r.json()["error"]["message"], r.json()["error"]["param"])
        r = await c.post("/v1/apps/a/events", json=_event("stage_started", "run", "sandbox"))
        grant = r.json()["grant"]
        out["other"] = (await c.get(f"/v1/apps/b/grants/{grant}")).status_code
        out["unknown"] = (await c.get("/v1/apps/a/grants/g999")).status_code
        # An unmanaged backend answers as before.
        r = await c.post("/v1/apps/z/events", json=_event("stage_started", "s", "web"))
        out["plain"] = r.json()

    _drive(gw, body)
    assert out["wait"] == (400, "'wait' must be true or false, got 1", "wait")
    assert out["other"] == out["unknown"] == 404
    assert out["plain"] == {"ok": True}
