"""The llm-d / Gateway API Inference Extension headers on forwarded calls: the mapping, its
configuration, and what an upstream receives from the single-process gateway and from the Ray
ingress replicas (their protocol in one process, `hermes.ray_serve.local`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx
import pytest

from hermes.config_base import ConfigError
from hermes.gateway.config import Backend, GatewayConfig, gateway_config_from_dict
from hermes.gateway.inference_headers import (
    FAIRNESS_ID,
    OBJECTIVE,
    RANK,
    TPOT_SLO,
    TTFT_SLO,
    CallFacts,
    InferenceHeaders,
    inference_headers,
)
from hermes.gateway.tenants import ApiKey
from hermes.ray_serve.local import LocalRayGateway
from hermes.testing.asgi_thread import serving
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.testing.recording_upstream import RecordingUpstream

ALL = (OBJECTIVE, FAIRNESS_ID, TTFT_SLO, TPOT_SLO, RANK)
GIE = InferenceHeaders(
    objectives={"rt": "premium"}, ttft_slo_ms={"rt": 500}, tpot_slo_ms={"rt": 50}
)


def test_the_mapping_of_a_call_to_its_headers() -> None:
    rt = inference_headers(GIE, CallFacts("rt", None, None, -1e9 + 2.5))
    assert rt == {
        OBJECTIVE: "premium",
        FAIRNESS_ID: "default-flow",
        TTFT_SLO: "500",
        TPOT_SLO: "50",
        RANK: "-999999997.5",
    }
    be = inference_headers(GIE, CallFacts("be", "acme", None, 3.0))
    assert be == {OBJECTIVE: "be", FAIRNESS_ID: "acme", RANK: "3.0"}
    # A deadline: the time left is the TTFT SLO where it is tighter, never under 1 ms.
    assert inference_headers(GIE, CallFacts("be", None, 7.0001, 0))[TTFT_SLO] == "7001"
    assert inference_headers(GIE, CallFacts("rt", None, 0.2, 0))[TTFT_SLO] == "200"
    assert inference_headers(GIE, CallFacts("rt", None, 9.0, 0))[TTFT_SLO] == "500"
    assert inference_headers(GIE, CallFacts("be", None, -3.0, 0))[TTFT_SLO] == "1"
    assert RANK not in inference_headers(
        InferenceHeaders(rank=False), CallFacts("be", None, None, 0)
    )
    assert inference_headers(GIE, CallFacts("rt", None, None, float("-inf")))[RANK] == "-inf"


def test_who_gets_them_by_default_and_the_shorthand() -> None:
    for kind in ("vllm", "sglang", "llamacpp", "emulated"):
        assert InferenceHeaders().sent_to(kind)
    assert not InferenceHeaders().sent_to("openai")  # a hosted API: tenants' names stay here
    assert InferenceHeaders(enabled=True).sent_to("openai")
    backend = {"name": "u", "url": "http://x", "models": ["m"], "inference_headers": False}
    cfg = gateway_config_from_dict({"backends": [backend]})
    assert cfg.backends[0].inference_headers == InferenceHeaders(enabled=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"objectives": {"rt": "Premium_1"}}, "objectives: rt: 'Premium_1' is not an Inference"),
        ({"objectives": {"gold": "x"}}, "objectives.gold"),
        ({"ttft_slo_ms": {"rt": 0}}, "rt: 0 is not a number of milliseconds >= 1"),
        ({"tpot_slo_ms": {"be": float("nan")}}, "tpot_slo_ms"),
        ({"enable": True}, "enable"),
        ("yes please", "inference_headers"),
    ],
)
def test_bad_settings_are_refused_with_the_field(value: object, expected: str) -> None:
    raw = {
        "backends": [{"name": "u", "url": "http://x", "models": ["m"], "inference_headers": value}]
    }
    with pytest.raises(ConfigError, match=r"backends\[0\]\.inference_headers") as e:
        gateway_config_from_dict(raw)
    assert expected in str(e.value)


def _config(url: str) -> GatewayConfig:
    on = Backend(name="gie", url=url, models=["m"], api_key="up-key", inference_headers=GIE)
    off = Backend(name="plain", url=url, models=["m-off"], inference_headers=False)
    return GatewayConfig(
        port=0,
        policy="edf",
        backends=[on, off],
        api_key="legacy",
        api_keys=[ApiKey(name="acme", key="k-acme")],
    )


@contextmanager
def _single(cfg: GatewayConfig) -> Iterator[str]:
    with gateway_in_thread(cfg) as (_, base):
        yield base


def _on_ray(cfg: GatewayConfig) -> AbstractContextManager[str]:
    return serving(LocalRayGateway(cfg, replicas=2))


@pytest.mark.parametrize("shell", [_single, _on_ray], ids=["gateway", "ray-ingress"])
def test_an_upstream_receives_them_from_both_shells(
    shell: Callable[[GatewayConfig], AbstractContextManager[str]],
) -> None:
    up = RecordingUpstream()
    with serving(up.app) as url, shell(_config(url)) as base, httpx.Client(timeout=30) as c:

        def send(content: str, key: str = "legacy", model: str = "m", **headers: str) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": content}]}
            headers["authorization"] = f"Bearer {key}"
            r = c.post(base + "/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text

        send("rt", **{"x-hermes-slo-class": "rt"})
        send("be")
        send("tenant", key="k-acme")
        app = {"x-hermes-app-id": "d1", "x-hermes-deadline-ms": "60000"}
        send("deadline-1", key="k-acme", **app)
        send("deadline-2", key="k-acme", **app)
        send(
            "rt-deadline",
            **{"x-hermes-slo-class": "rt", "x-hermes-app-id": "d2"},
            **{"x-hermes-deadline-ms": "100"},
        )
        send("off", model="m-off", **{"x-hermes-slo-class": "rt"})
    got = up.headers
    rt, be = got["rt"], got["be"]
    assert (rt[OBJECTIVE], rt[FAIRNESS_ID], rt[TTFT_SLO], rt[TPOT_SLO]) == (
        "premium",
        "default-flow",
        "500",
        "50",
    )
    # Lower first, across classes too: real-time calls lead, as in the engine priority.
    assert float(rt[RANK]) < float(be[RANK])
    assert (be[OBJECTIVE], be[FAIRNESS_ID]) == ("be", "default-flow")
    assert TTFT_SLO not in be
    assert TPOT_SLO not in be
    assert got["tenant"][FAIRNESS_ID] == "acme"
    # An application's deadline: the time left to it, counted from its first call.
    first, second = (int(got[f"deadline-{i}"][TTFT_SLO]) for i in (1, 2))
    assert 1 <= second <= first <= 60_000
    assert got["deadline-1"][FAIRNESS_ID] == "acme"
    assert TPOT_SLO not in got["deadline-1"]  # best-effort: no TPOT SLO configured
    assert 1 <= int(got["rt-deadline"][TTFT_SLO]) <= 100  # tighter than the class's 500
    assert not set(ALL) & set(got["off"])  # the off switch
    for h in got.values():  # what was sent before is sent still
        assert h["content-type"] == "application/json"
    assert rt["authorization"] == "Bearer up-key"
