"""`hermes serve --ray` on a local Ray started here (2 CPUs, once for the module): the
official openai client plain and streaming against an emulated engine, the grant order of 2
ingress replicas against the single-process gateway's, an ingress replica killed under load,
and the scheduler actor killed and restarted by Ray."""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

with warnings.catch_warnings():  # Ray's own deprecations, at its import
    warnings.simplefilter("ignore", DeprecationWarning)
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")

from hermes.emulator.server import emulated_app
from hermes.gateway.config import Backend, GatewayConfig, RayOptions
from hermes.gateway.inference_headers import FAIRNESS_ID, OBJECTIVE, TTFT_SLO
from hermes.ray_serve.deployment import RayGateway, deploy, local_ray_settings, undeploy
from hermes.ray_serve.ingress import REPLICA_HEADER
from hermes.testing.asgi_thread import serving
from hermes.testing.blocking_upstream import BlockingUpstream
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.testing.grant_order import ARRIVALS, grant_order, wait_until
from hermes.testing.ports import free_port
from hermes.testing.recording_upstream import RecordingUpstream
from openai_checks import streamed_completion

PORT = free_port()  # Serve's proxy: one port for the Ray session


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    with local_ray_settings():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="hermes")
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def config(
    url: str,
    policy: str = "edf",
    concurrency: int = 1,
    kind: Any = "vllm",
    replica_timeout_s: float = 3.0,
    scheduler_timeout_s: float = 30.0,
    **extra: Any,
) -> GatewayConfig:
    backend = Backend(name="u0", kind=kind, url=url, models=["m"], concurrency=concurrency)
    opts = RayOptions(
        ingress_replicas=2,
        poll_s=0.5,
        replica_timeout_s=replica_timeout_s,
        scheduler_timeout_s=scheduler_timeout_s,
    )
    extra.setdefault("port", PORT)
    return GatewayConfig(policy=policy, backends=[backend], ray=opts, **extra)


@pytest.fixture
def on_ray() -> Iterator[list[RayGateway]]:
    """Gateways deployed in the test go down at its end, whatever happens."""
    deployed: list[RayGateway] = []
    yield deployed
    for gw in deployed:
        undeploy(gw)


def stats(gw: RayGateway) -> dict[str, Any]:
    result: dict[str, Any] = ray.get(gw.scheduler.stats.remote(), timeout=30)
    return result


def test_the_official_client_plain_and_streaming(on_ray: list[RayGateway]) -> None:
    with serving(emulated_app(["m"], time_scale=0.05)) as url:
        cfg = config(url, "gittins", concurrency=4)
        cfg = cfg.model_copy(
            update={"backends": [cfg.backends[0].model_copy(update={"kind": "emulated"})]}
        )
        gw = deploy(cfg)
        on_ray.append(gw)
        heads = {"x-hermes-app-id": "a1", "x-hermes-app-type": "demo", "x-hermes-stage": "ask"}
        with openai.OpenAI(
            base_url=gw.url + "/v1", api_key="-", default_headers=heads, max_retries=0
        ) as c:
            r = c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hello " * 40}], max_tokens=6
            )
            assert r.usage is not None
            assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (60, 6)
            chunks = streamed_completion(c)
            assert chunks[-1].usage.prompt_tokens == 100
            with pytest.raises(openai.NotFoundError):
                c.chat.completions.create(model="x", messages=[{"role": "user", "content": "y"}])
        wait_until(lambda: stats(gw)["running"] == 0, what="calls released")
        assert stats(gw)["queued"] == 0
        # The scheduler's own routes, through a replica: an event, the metrics.
        event = {"event": "stage_started", "stage": "look", "backend": "web"}
        assert httpx.post(gw.url + "/v1/apps/a1/events", json=event).json() == {"ok": True}
        assert "hermes_generation_tokens_total 11.0" in httpx.get(gw.url + "/metrics").text
        assert "dashboard.js" in httpx.get(gw.url + "/dashboard").text  # the replicas' page


def test_two_replicas_grant_in_the_single_process_order(on_ray: list[RayGateway]) -> None:
    single, split = RecordingUpstream(is_open=False), RecordingUpstream(is_open=False)
    with serving(single.app) as url, gateway_in_thread(config(url, port=0)) as (g, base):
        expected = grant_order(base, lambda: g.dispatcher.queued, single)
    with serving(split.app) as url:
        gw = deploy(config(url))
        on_ray.append(gw)
        got = grant_order(gw.url, lambda: int(stats(gw)["queued"]), split)
        # Both replicas took calls: the order is the scheduler's, not one replica's.
        assert len(stats(gw)["replicas"]) == 2
    assert got == expected
    assert expected[1:] != [a for a, _ in ARRIVALS[1:]]  # not merely first come, first served

    # The inference gateway's headers, the same from both (time left and rank: clock readings).
    def gie(up: RecordingUpstream) -> dict[str, tuple[str, str, bool]]:
        return {c: (h[OBJECTIVE], h[FAIRNESS_ID], TTFT_SLO in h) for c, h in up.headers.items()}

    assert gie(split) == gie(single)


class SlowUpstream(BlockingUpstream):
    """Open, but each call takes `delay_s`."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(is_open=True)
        self.delay_s = delay_s

    async def _call(self, request: Any) -> Any:
        import asyncio

        await asyncio.sleep(self.delay_s)
        return await super()._call(request)


def test_a_killed_ingress_replica_loses_only_its_own_calls(on_ray: list[RayGateway]) -> None:
    upstream = SlowUpstream(0.3)
    with serving(upstream.app) as url:
        gw = deploy(config(url, "vllm", concurrency=2))
        on_ray.append(gw)
        results: list[tuple[int, str | None]] = []

        def send(i: int) -> None:
            body = {"model": "m", "messages": [{"role": "user", "content": f"c{i}"}]}
            try:
                r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=120)
                results.append((r.status_code, r.headers.get(REPLICA_HEADER)))
            except httpx.HTTPError:
                results.append((-1, None))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(stats(gw)["replicas"].values()) == 16, what="16 calls held")
        held = stats(gw)["replicas"]
        assert len(held) == 2, held  # both replicas took calls
        victim, survivor = sorted(held, key=lambda name: held[name])  # kill the one with fewer
        os.kill(int(victim.split("-")[-2]), signal.SIGKILL)
        for t in threads:
            t.join(120)
        ok = [replica for status, replica in results if status == 200]
        assert len(results) == 16
        # Every call the survivor held completed; the victim's failed, or Serve's proxy sent
        # them on to the survivor (it did once, on a busy machine).
        assert ok.count(survivor) >= held[survivor]
        assert len(ok) >= held[survivor]
        assert 16 - len(ok) <= held[victim]
        wait_until(lambda: stats(gw)["lost_replicas"] == 1, what="the victim given up")
        wait_until(lambda: stats(gw)["running"] == 0, what="its slots freed")
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "after"}]},
            timeout=60,
        )
        assert r.status_code == 200


def test_a_restarted_scheduler_requeues_waiting_calls_and_relearns(
    on_ray: list[RayGateway], tmp_path: Path
) -> None:
    upstream = BlockingUpstream(is_open=True)
    store = str(tmp_path / "runs.sqlite")
    with serving(upstream.app) as url:
        # Long timeouts: on a busy machine the actor's restart can take longer than 30 s, and
        # the waiting calls would get their explicit 503 instead of going back in the queue.
        cfg = config(
            url, "gittins", 1, "vllm", 30.0, 120.0, run_store=store, app_idle_timeout_s=0.5
        )
        gw = deploy(cfg)
        on_ray.append(gw)
        heads = {"x-hermes-app-id": "a1", "x-hermes-app-type": "demo", "x-hermes-stage": "s"}
        body = {"model": "m", "messages": [{"role": "user", "content": "learn me"}]}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=heads).is_success
        wait_until(lambda: stats(gw)["graphs"] == ["demo"], what="the run learned")
        # Calls waiting behind a held slot when the actor dies.
        upstream.hold()
        results: list[int] = []

        def send(i: int) -> None:
            b = {"model": "m", "messages": [{"role": "user", "content": f"w{i}"}]}
            r = httpx.post(gw.url + "/v1/chat/completions", json=b, timeout=120)
            results.append(r.status_code)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: stats(gw)["queued"] == 3, what="3 calls waiting")
        # A client that gives up while its call waits: Serve cancels the call's handler, and
        # the call leaves the queue.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=1.0)
        wait_until(lambda: stats(gw)["queued"] == 3, what="the abandoned call gone")
        assert sum(stats(gw)["replicas"].values()) == 4  # 1 running, 3 waiting
        before = stats(gw)
        ray.kill(gw.scheduler, no_restart=False)

        def restarted() -> bool:
            try:
                return bool(stats(gw)["epoch"] != before["epoch"])
            except ray.exceptions.RayError:  # unavailable while it restarts
                return False

        wait_until(restarted, 60, "a new scheduler")
        after = stats(gw)
        assert after["pid"] != before["pid"]
        assert after["graphs"] == ["demo"]  # rebuilt from the run store
        upstream.open()
        for t in threads:
            t.join(120)
        assert results == [200] * 4
