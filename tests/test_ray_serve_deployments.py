"""A Ray Serve deployment as the upstream (`url: serve://APP/DEPLOYMENT`) of `hermes serve
--ray`, on a local Ray started here (2 CPUs, once for the module): the emulator deployment
(2 replicas, placed by `HermesRequestRouter`) that `deploy` starts for an emulated serve://
backend; the official openai client plain and streaming through 2 ingress replicas; each
application's calls on one engine replica, whichever ingress replica takes them."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

with warnings.catch_warnings():  # Ray's own deprecations, at its import
    warnings.simplefilter("ignore", DeprecationWarning)
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")

from hermes.gateway.config import Backend, GatewayConfig, RayOptions
from hermes.ray_serve.deployment import RayGateway, deploy, local_ray_settings, undeploy
from hermes.ray_serve.ingress import REPLICA_HEADER
from hermes.testing.grant_order import wait_until
from hermes.testing.ports import free_port
from openai_checks import streamed_completion


@pytest.fixture(scope="module")
def gateway() -> Iterator[RayGateway]:
    """The gateway on a local Ray, its backend the emulator as a 2-replica Serve deployment."""
    with local_ray_settings():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="hermes")
    backend = Backend(
        name="llm",
        kind="emulated",
        url="serve://llm/Engine",
        models=["m"],
        concurrency=8,
        time_scale=0.02,
    )
    # No replica goes silent here: a long timeout, so that a loaded machine does not look it.
    opts = RayOptions(ingress_replicas=2, poll_s=0.5, replica_timeout_s=30.0)
    cfg = GatewayConfig(policy="gittins", backends=[backend], ray=opts, port=free_port())
    try:
        gw = deploy(cfg)
        try:
            yield gw
        finally:
            undeploy(gw)
    finally:
        serve.shutdown()
        ray.shutdown()


def stats(gw: RayGateway) -> dict[str, Any]:
    result: dict[str, Any] = ray.get(gw.scheduler.stats.remote(), timeout=30)
    return result


def test_the_official_client_plain_and_streaming(gateway: RayGateway) -> None:
    assert gateway.engines == ("llm",)  # deployed for the emulated serve:// backend
    heads = {"x-hermes-app-id": "a1", "x-hermes-app-type": "demo", "x-hermes-stage": "ask"}
    with openai.OpenAI(
        base_url=gateway.url + "/v1", api_key="-", default_headers=heads, max_retries=0
    ) as c:
        r = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello " * 40}], max_tokens=6
        )
        assert r.usage is not None
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (60, 6)
        assert r.system_fingerprint  # the engine replica that answered
        chunks = streamed_completion(c)
        assert chunks[-1].usage.prompt_tokens == 100
        # The same application: the same engine replica, streamed or not.
        assert {ch.system_fingerprint for ch in chunks} == {r.system_fingerprint}
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            c.completions.create(model="m", prompt="x", max_tokens=10**6)
    wait_until(lambda: stats(gateway)["running"] == 0, what="calls released")
    assert "hermes_generation_tokens_total 11.0" in httpx.get(gateway.url + "/metrics").text


def test_an_application_stays_on_its_engine_replica(gateway: RayGateway) -> None:
    """12 applications, 4 calls each, one at a time: each application's calls on one engine
    replica (its first placed by the hash every ingress replica's router agrees on, the rest
    by the router's memory), both ingress replicas taking calls, both engine replicas used."""
    engines: dict[str, set[str]] = defaultdict(set)
    ingresses: set[str] = set()
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for turn in range(4):
            for i in range(12):
                heads = {"x-hermes-app-id": f"app-{i}", "x-hermes-app-type": "t"}
                heads["x-hermes-stage"] = f"s{turn}"
                body = {"model": "m", "prompt": f"turn {turn}", "max_tokens": 2}
                r = client.post("/v1/completions", json=body, headers=heads)
                assert r.status_code == 200, r.text
                engines[f"app-{i}"].add(r.json()["system_fingerprint"])
                ingresses.add(r.headers[REPLICA_HEADER])
    assert all(len(e) == 1 for e in engines.values()), dict(engines)
    assert len(ingresses) == 2
    assert len(set().union(*engines.values())) == 2
