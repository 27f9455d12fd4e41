"""The Ray gateway's protocol without Ray: ingress replicas and the scheduler core in one
process (`hermes.ray_serve.local`), served over real HTTP, with the official openai client;
grant orders against the single-process gateway's; a scheduler restart; a lost replica."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import httpx
import openai
import pytest

from hermes.emulator.server import emulated_app
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.context import CallContext
from hermes.ray_serve.link import RefusedError, SchedulerLink
from hermes.ray_serve.local import LocalRayGateway, LocalRemote
from hermes.ray_serve.protocol import Op, Release, Reply, Submit
from hermes.ray_serve.scheduler import SchedulerCore
from hermes.testing.asgi_thread import serving
from hermes.testing.blocking_upstream import BlockingUpstream
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.testing.grant_order import ARRIVALS, grant_order
from openai_checks import streamed_completion


def config(url: str, policy: str = "edf", kind: str = "vllm", **extra: object) -> GatewayConfig:
    backend = Backend(name="u0", kind=kind, url=url, models=["m"], concurrency=1)
    return GatewayConfig(port=0, policy=policy, backends=[backend], **extra)


@pytest.fixture
def emulated() -> Iterator[str]:
    with serving(emulated_app(["m"], time_scale=0.05)) as url:
        yield url


def test_local_ray_gateway_serves_the_official_client_plain_and_streaming(emulated: str) -> None:
    gw = LocalRayGateway(config(emulated, "gittins", kind="emulated"), replicas=2)
    with serving(gw) as base, openai.OpenAI(base_url=base + "/v1", api_key="-") as c:
        for _ in range(2):  # both replicas
            r = c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi " * 40}], max_tokens=4
            )
            assert r.usage is not None
            assert r.usage.completion_tokens == 4
        streamed_completion(c)
        with pytest.raises(openai.NotFoundError, match="not served here"):
            c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        stats = gw.core.stats()
        assert (stats["queued"], stats["running"]) == (0, 0)
        assert sorted(stats["replicas"]) == ["local-0", "local-1"]


def test_grant_order_equals_the_single_process_gateway() -> None:
    single, split = BlockingUpstream(), BlockingUpstream()
    with serving(single.app) as url, gateway_in_thread(config(url)) as (gw, base):
        expected = grant_order(base, lambda: gw.dispatcher.queued, single)
    with serving(split.app) as url:
        ray_gw = LocalRayGateway(config(url), replicas=2)
        with serving(ray_gw) as base:
            got = grant_order(base, lambda: ray_gw.core.gateway.dispatcher.queued, split)
    assert got == expected
    assert expected[0] == "blocker"
    assert sorted(expected[1:]) == sorted(a for a, _ in ARRIVALS[1:])
    assert expected[1:] != [a for a, _ in ARRIVALS[1:]]  # not merely first come first served


class _Flaky(LocalRemote):
    """A remote whose core can be swapped for a new one (a restarted actor) and that fails
    while `down`."""

    down = False

    async def step(self, replica: str, ops: Sequence[Op]) -> Reply:
        if self.down:
            raise ConnectionError("actor restarting")
        return await super().step(replica, ops)

    async def poll(self, replica: str, wait_s: float) -> Reply:
        if self.down:
            raise ConnectionError("actor restarting")
        return await super().poll(replica, wait_s)


def ctx(app: str) -> CallContext:
    return CallContext(app, "t", "s", None, None)


def test_a_restarted_scheduler_gets_the_waiting_calls_again() -> None:
    async def main() -> None:
        cfg = config("http://127.0.0.1:9", policy="vllm")
        first = SchedulerCore.from_config(cfg)
        remote = _Flaky(first)
        link = SchedulerLink(remote, "r0", poll_s=0.05, scheduler_timeout_s=30)
        await link.start()
        calls = [link.submit(ctx(f"a{i}"), "m", 10) for i in range(3)]
        granted = await asyncio.wait_for(calls[0].future, 5)
        assert granted.upstream == "u0"
        await asyncio.sleep(0.1)
        assert first.stats()["queued"] == 2
        # The actor dies and comes back empty (a new epoch): the two waiting calls queue again.
        remote.down = True
        await asyncio.sleep(0.2)
        remote.core = second = SchedulerCore.from_config(cfg)
        remote.down = False
        await asyncio.sleep(0.3)
        assert second.stats()["queued"] == 1
        assert second.stats()["running"] == 1
        assert link.restarts_seen == 1
        assert (await asyncio.wait_for(calls[1].future, 5)).upstream == "u0"
        link.release(calls[1].submit.call_id, "stop")
        assert (await asyncio.wait_for(calls[2].future, 5)).upstream == "u0"
        await link.close()

    asyncio.run(main())


def test_calls_get_503_when_the_scheduler_stays_away() -> None:
    async def main() -> None:
        remote = _Flaky(SchedulerCore.from_config(config("http://127.0.0.1:9")))
        remote.down = True
        link = SchedulerLink(remote, "r0", poll_s=0.05, scheduler_timeout_s=0.3)
        await link.start()
        call = link.submit(ctx("a"), "m", 10)
        with pytest.raises(RefusedError) as e:
            await asyncio.wait_for(call.future, 10)
        assert e.value.refused.status == 503
        assert "scheduler has not answered" in e.value.refused.message
        await link.close()

    asyncio.run(main())


def test_a_silent_replica_loses_only_its_own_calls() -> None:
    async def main() -> None:
        core = SchedulerCore.from_config(config("http://127.0.0.1:9", policy="vllm"))
        core.replica_timeout_s = 0.2
        # Replica a holds the slot and one waiting call; replica b one waiting call.
        r = await core.step("a", [Submit(0, ctx("x0"), "m", 1), Submit(1, ctx("x1"), "m", 1)])
        assert [g.call_id for g in r.granted] == [0]
        a_epoch = r.epoch
        await core.step("b", [Submit(0, ctx("y0"), "m", 1)])
        assert core.stats()["queued"] == 2
        await asyncio.sleep(0.3)
        await core.step("b", [])  # b is alive; a has gone silent
        core.tick()
        assert core.stats()["replicas"] == {"b": 1}
        assert core.lost_replicas == 1
        r = await core.poll("b", 1.0)
        assert [g.call_id for g in r.granted] == [0]  # a's slot went to b's call
        await core.step("b", [Release(0, "stop", {"prompt_tokens": 1, "completion_tokens": 1})])
        assert (core.stats()["queued"], core.stats()["running"]) == (0, 0)
        # a was only slow: it hears of a new epoch, and queues its waiting calls again.
        assert (await core.step("a", [])).epoch != a_epoch

    asyncio.run(main())


def test_a_call_that_waits_too_long_is_refused_with_429() -> None:
    async def main() -> None:
        core = SchedulerCore.from_config(config("http://127.0.0.1:9", queue_timeout_s=0.1))
        await core.step("a", [Submit(0, ctx("x0"), "m", 1), Submit(1, ctx("x1"), "m", 1)])
        await asyncio.sleep(0.15)
        core.tick()
        r = await core.step("a", [])
        assert [(x.call_id, x.status) for x in r.refused] == [(1, 429)]
        assert "queue_timeout_s" in r.refused[0].message
        assert core.stats()["queued"] == 0

    asyncio.run(main())


def test_records_survive_the_wire() -> None:
    from hermes.ray_serve.protocol import (
        Granted,
        Refused,
        ops_from_wire,
        ops_to_wire,
        reply_from_wire,
        reply_to_wire,
    )

    ops: list[Op] = [
        Submit(1, CallContext("a", "t", "s", 5.0, "rt", 2), "m", 3),
        Submit(2, CallContext(None, "default", "llm", None, None), "m", 1),
        Release(2, "stop", {"prompt_tokens": 1}),
    ]
    assert ops_from_wire(ops_to_wire(ops)) == ops
    reply = Reply("e", [Granted(1, "u", 1.5, {"id_slot": 0})], [Refused(2, 429, "t", "m")])
    assert reply_from_wire(reply_to_wire(reply)) == reply


def test_ray_flags_and_options_are_checked() -> None:
    from typer.testing import CliRunner

    from hermes.cli import app
    from hermes.gateway.config import gateway_config_from_dict

    res = CliRunner().invoke(app, ["serve", "--emulate", "--ray-address", "auto"])
    assert res.exit_code == 2
    assert "--ray-address needs --ray" in res.output
    data = {"backends": [{"name": "a", "url": "http://x", "models": ["m"]}]}
    with pytest.raises(ValueError, match=r"poll_s \(5\) must be below replica_timeout_s \(2\)"):
        gateway_config_from_dict({**data, "ray": {"poll_s": 5, "replica_timeout_s": 2}})
    with pytest.raises(ValueError, match="ingress_replicas"):
        gateway_config_from_dict({**data, "ray": {"ingress_replicas": 0}})


def test_events_finishes_and_metrics_are_the_schedulers(emulated: str) -> None:
    """Tool-stage events and finishes reach the scheduler's gateway through any replica (its
    own routes answer them): the application's run is learned; /metrics is its metrics."""
    cfg = config(emulated, "gittins", kind="emulated", admin_key="adm")
    gw = LocalRayGateway(cfg, replicas=2)
    heads = {"x-hermes-app-id": "a1", "x-hermes-app-type": "agent", "x-hermes-stage": "think"}
    admin = {"Authorization": "Bearer adm"}
    with serving(gw) as base, httpx.Client(base_url=base, timeout=30) as c:
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * 80}], "max_tokens": 3}
        assert c.post("/v1/chat/completions", json=body, headers=heads).status_code == 200
        event = {"event": "stage_started", "stage": "search", "backend": "web"}
        r = c.post("/v1/apps/a1/events", json=event, headers=admin)
        assert r.status_code == 200, r.text
        assert c.post("/v1/apps/a1/events", json=event).status_code == 401  # the admin key
        done = {"event": "stage_finished", "stage": "search"}
        assert c.post("/v1/apps/a1/events", json=done, headers=admin).status_code == 200
        assert c.post("/v1/apps/a1/finish", headers=admin).json() == {"ok": True}
        r = c.post("/v1/apps/a1/finish", headers=admin)
        assert r.status_code == 404
        assert "no application in progress" in r.json()["error"]["message"]
        assert gw.core.stats()["graphs"] == ["agent"]
        metrics = c.get("/metrics", headers=admin).text
        assert "hermes_generation_tokens_total 3.0" in metrics


def test_hermes_serve_ray_starts_emulated_backends_itself() -> None:
    """`hermes serve --ray --emulate`'s engines: served from the command's own event loop,
    by URL (what replicas on Ray then reach), and stopped with it."""
    from hermes.gateway.config import emulated_default
    from hermes.ray_serve.launch import emulated_backends

    async def main() -> None:
        async with emulated_backends(emulated_default(time_scale=0.05)) as cfg:
            (b,) = cfg.backends
            assert b.url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=b.url) as c:
                assert (await c.get("/health")).status_code == 200
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=b.url) as c:
                await c.get("/health")

    asyncio.run(main())


def test_a_call_that_cannot_reach_its_upstream_is_retried_once_elsewhere() -> None:
    live = BlockingUpstream(is_open=True)
    with serving(live.app) as url:
        # The dead one has more room: the first grant goes there.
        dead = Backend(name="dead", url="http://127.0.0.1:9", models=["m"], concurrency=2)
        ok = Backend(name="live", url=url, models=["m"], concurrency=1)
        gw = LocalRayGateway(GatewayConfig(port=0, policy="vllm", backends=[dead, ok]))
        with serving(gw) as base, httpx.Client(base_url=base, timeout=30) as c:
            body = {"model": "m", "messages": [{"role": "user", "content": "r1"}]}
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert live.arrived == ["r1"]
            metrics = c.get("/metrics").text
            assert 'hermes_upstream_errors_total{kind="connect",upstream="dead"} 1.0' in metrics
    # With nowhere else to go, the call gets 502.
    alone = LocalRayGateway(GatewayConfig(port=0, policy="vllm", backends=[dead]))
    with serving(alone) as base:
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 502
        assert "upstream unavailable" in r.json()["error"]["message"]
        assert (alone.core.stats()["queued"], alone.core.stats()["running"]) == (0, 0)
