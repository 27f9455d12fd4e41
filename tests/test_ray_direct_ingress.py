"""`ray: {direct_ingress: true, scheduler_link: tcp}`: each ingress replica serves HTTP on a
port of its own (Ray Serve's direct ingress), skipping the proxy's hop, and reaches the
scheduler actor on its socket. On a local Ray that `deploy` starts itself
(the variable must be in Ray's processes from their start): the official client through each
replica's own port, and calls spread over both ports granted in the single-process order."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

with warnings.catch_warnings():  # Ray's own deprecations, at its import
    warnings.simplefilter("ignore", DeprecationWarning)
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")

from hermes.gateway.config import Backend, GatewayConfig, RayOptions
from hermes.ray_serve.deployment import DIRECT_INGRESS_ENV, deploy, undeploy
from hermes.ray_serve.ingress import REPLICA_HEADER
from hermes.testing.asgi_thread import serving
from hermes.testing.blocking_upstream import BlockingUpstream
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.testing.grant_order import ARRIVALS, grant_order, wait_until
from hermes.testing.ports import free_port


def config(url: str, port: int, direct: bool = True) -> GatewayConfig:
    backend = Backend(name="u0", kind="vllm", url=url, models=["m"], concurrency=1)
    # The low-latency setup: replicas' own ports, steps over the actor's socket.
    link = "tcp" if direct else "ray"
    opts = RayOptions(
        ingress_replicas=2,
        poll_s=0.5,
        replica_timeout_s=30.0,  # no replica goes silent here: a loaded machine must not look it
        num_cpus=2,
        direct_ingress=direct,
        scheduler_link=link,
    )
    return GatewayConfig(policy="edf", backends=[backend], ray=opts, port=port)


@pytest.fixture
def fresh_ray() -> Iterator[None]:
    """No Ray running before (deploy starts its own, with direct ingress), none after."""
    if ray.is_initialized():
        ray.shutdown()
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def _spread_order(
    urls: tuple[str, ...], queued: Callable[[], int], upstream: BlockingUpstream
) -> list[str]:
    """`grant_order`'s arrivals, sent in turn to each replica's own port."""
    answers: list[int] = []

    def send(base: str, content: str, headers: dict[str, str]) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        r = httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        answers.append(r.status_code)

    threads = []
    for n, (content, headers) in enumerate(ARRIVALS):
        t = threading.Thread(target=send, args=(urls[n % len(urls)], content, headers))
        t.start()
        threads.append(t)

        def ready(n: int = n) -> bool:
            return queued() == n and len(upstream.arrived) == 1

        wait_until(ready, what=f"call {n} queued")
    upstream.open()
    for t in threads:
        t.join(60)
    assert answers == [200] * len(ARRIVALS)
    return list(upstream.arrived)


def test_each_replica_serves_its_own_port_in_the_single_process_order(fresh_ray: None) -> None:
    single, split = BlockingUpstream(), BlockingUpstream()
    with serving(single.app) as url, gateway_in_thread(config(url, 0, False)) as (g, base):
        expected = grant_order(base, lambda: g.dispatcher.queued, single)
    with serving(split.app) as url:
        gw = deploy(config(url, free_port()))
        try:
            # The variables were there while Ray started, and are gone from here after.
            assert not any(k in os.environ for k in DIRECT_INGRESS_ENV)
            assert len(gw.replica_urls) == 2
            assert gw.url not in gw.replica_urls
            answered_by = set()
            for base in gw.replica_urls:
                r = httpx.get(base + "/healthz")
                assert r.status_code == 200
                answered_by.add(r.json()["replica"])
            assert len(answered_by) == 2  # each port is one replica's

            def queued() -> int:
                return int(ray.get(gw.scheduler.stats.remote(), timeout=30)["queued"])

            got = _spread_order(gw.replica_urls, queued, split)
            split.hold()
            split.open()
            with openai.OpenAI(base_url=gw.replica_urls[1] + "/v1", api_key="-") as c:
                raw = c.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
                assert raw.headers[REPLICA_HEADER] in answered_by
                chunks = list(
                    c.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                    )
                )
                assert chunks
            # The proxy still serves too.
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
        finally:
            undeploy(gw)
    assert got == expected
