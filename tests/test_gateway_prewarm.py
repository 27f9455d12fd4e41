"""Prewarm actuators over real HTTP: a tool manager's hook called ahead of the tool stage the
PDGraph predicts, an instance retained for the next one, a sleeping emulated vLLM woken and a
LoRA adapter loaded, ahead of need and on demand."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hermes.config_base import PolicyOptions
from hermes.core.pdgraph import learn
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.gateway.config import Backend, GatewayConfig, gateway_config_from_dict
from hermes.gateway.prewarm import _Warmth
from hermes.testing.asgi_thread import serving
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.workloads.pdgraph_files import save_pdgraphs

MODEL = "llama-2-7b"


def _llm(name: str, model: str = MODEL) -> Stage:
    return Stage(name, "llm", "llm", (LLMCall(100, 40),), model)


def _graphs(tmp_path: Path, *runs: AppRun) -> str:
    path = tmp_path / "pdgraphs.json"
    save_pdgraphs(path, learn(runs))
    return str(path)


class _Manager:
    """A tool backend's manager: records the hook calls it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/warm", self.warm, methods=["POST"])])

    async def warm(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.calls.append((time.monotonic(), body))
        return JSONResponse({"ok": True})

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.calls) >= n:
                    return [b for _, b in self.calls]
            time.sleep(0.01)
        raise AssertionError(f"{n} hook calls expected, got {self.calls}")


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def _heads(app_id: str, app_type: str, stage: str) -> dict[str, str]:
    return {"x-hermes-app-id": app_id, "x-hermes-app-type": app_type, "x-hermes-stage": stage}


def _chat(base: str, heads: dict[str, str], model: str = MODEL) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 4}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=heads, timeout=30)


def test_a_tool_hook_is_called_before_the_predicted_stage_and_retained_after(
    tmp_path: Path,
) -> None:
    runs = [
        AppRun(
            "coder",
            f"r{i}",
            (
                _llm("plan"),
                Stage("test", "tool", "docker", (ToolCall(1.0),)),
                _llm("fix"),
                Stage("retest", "tool", "docker", (ToolCall(1.0),)),
            ),
        )
        for i in range(4)
    ]
    manager = _Manager()
    with serving(manager.app) as hooks:
        cfg = GatewayConfig(
            port=0,
            policy_options=PolicyOptions(pdgraphs=_graphs(tmp_path, *runs), prewarm="pdgraph"),
            backends=[Backend(name="e", kind="emulated", models=[MODEL], time_scale=0.02)],
            prewarm_targets=[
                {
                    "name": "docker",
                    "action": "http",
                    "cold_start_s": 20,
                    "hook": {"url": hooks + "/warm", "body": {"image": "python:3.11"}},
                }
            ],
        )
        with gateway_in_thread(cfg) as (_, base):
            assert _chat(base, _heads("c1", "coder", "plan")).status_code == 200
            # The cold start (20 s) outlasts the plan stage: warm at once, before the tool.
            (order,) = manager.wait_for(1)
            assert order["backend"] == "docker"
            assert order["reason"] == "prewarm"
            assert order["app_id"] == "c1"
            assert order["app_type"] == "coder"
            assert order["image"] == "python:3.11"
            assert order["hold_s"] >= 20
            ev = base + "/v1/apps/c1/events"
            started = {"event": "stage_started", "stage": "test", "backend": "docker"}
            assert httpx.post(ev, json=started).status_code == 200
            finished = {"event": "stage_finished", "stage": "test"}
            assert httpx.post(ev, json=finished).status_code == 200
            # The next tool stage uses docker again: keep the instance just used.
            retain = manager.wait_for(2)[1]
            assert retain["reason"] == "retain"
            assert retain["backend"] == "docker"
            assert retain["hold_s"] > 20  # p95 of the time to the next tool stage + a cold start
            text = httpx.get(base + "/metrics").text
            # Ordered under a second ago, with a 20 s cold start: still warming.
            assert (
                _metric(text, "hermes_prewarm_tool_starts_total", target="docker", state="warming")
                == 1
            )
            assert (
                _metric(text, "hermes_prewarm_orders_total", target="docker", reason="prewarm") == 1
            )
            assert _metric(text, "hermes_prewarm_actions_total", target="docker", result="ok") == 2


def test_warmth_is_scored_by_when_the_order_fired_and_how_long_it_holds() -> None:
    w = _Warmth()
    assert w.state(0.0, 5.0) == "cold"
    w.fired.append((10.0, 10.0 + 5.0 + 3.0))  # fired at 10, ready at 15, held until 18
    assert w.state(12.0, 5.0) == "warming"
    assert w.state(15.0, 5.0) == "warm"
    assert w.state(17.9, 5.0) == "warm"
    assert w.state(18.0, 5.0) == "cold"  # the hold ran out: the instance is gone
    assert w.fired == []


def _emulated_sleeping(base_config: dict[str, Any]) -> GatewayConfig:
    return gateway_config_from_dict({"port": 0, **base_config})


def test_a_sleeping_replica_is_woken_on_demand_and_put_back_to_sleep_when_idle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _emulated_sleeping(
        {
            "backends": [{"name": "e", "kind": "emulated", "models": [MODEL], "time_scale": 0.01}],
            "prewarm_targets": [
                {
                    "name": MODEL,
                    "action": "vllm-wake-up",
                    "upstream": "e",
                    "cold_start_s": 1,
                    "sleep_after_idle_s": 1,
                }
            ],
        }
    )
    with caplog.at_level(logging.INFO, "hermes.gateway"), gateway_in_thread(cfg) as (gw, base):
        engine = gw.config.backends[0].url
        assert httpx.get(engine + "/is_sleeping").json() == {"is_sleeping": False}
        # Idle past sleep_after_idle_s: the gateway puts the replica to sleep.
        deadline = time.monotonic() + 30  # a guard against a hang, not a timing claim
        while not httpx.get(engine + "/is_sleeping").json()["is_sleeping"]:
            assert time.monotonic() < deadline, "the idle replica was not put to sleep"
            time.sleep(0.05)
        # Straight to the engine, a sleeping replica refuses; through the gateway it is woken.
        direct = _chat(engine, {})
        assert direct.status_code == 503
        r = _chat(base, {})
        assert r.status_code == 200, r.text
        assert httpx.get(engine + "/is_sleeping").json() == {"is_sleeping": False}
        text = httpx.get(base + "/metrics").text
        assert _metric(text, "hermes_prewarm_on_demand_total", target=MODEL) == 1
        assert _metric(text, "hermes_prewarm_sleeps_total", upstream="e", result="ok") >= 1
    # Each change of the replica's state has its log line.
    assert "upstream e put to sleep: idle" in caplog.messages
    assert "upstream e woken up" in caplog.messages


def test_a_lora_adapter_is_loaded_ahead_of_the_stage_that_uses_it(tmp_path: Path) -> None:
    runs = [
        AppRun("sql", f"r{i}", (_llm("understand"), _llm("write", model="sql-lora")))
        for i in range(3)
    ]
    cfg = _emulated_sleeping(
        {
            "policy_options": {"pdgraphs": _graphs(tmp_path, *runs), "prewarm": "pdgraph"},
            "backends": [
                {
                    "name": "e",
                    "kind": "emulated",
                    "models": [MODEL, "sql-lora", "other-lora"],
                    "time_scale": 0.01,
                }
            ],
            "prewarm_targets": [
                {
                    "name": "sql-lora",
                    "action": "vllm-load-lora",
                    "upstream": "e",
                    "lora_path": "/adapters/sql",
                    "cold_start_s": 30,
                },
                {
                    "name": "other-lora",
                    "action": "vllm-load-lora",
                    "upstream": "e",
                    "lora_path": "/adapters/other",
                    "cold_start_s": 30,
                },
            ],
        }
    )
    with gateway_in_thread(cfg) as (gw, base):
        engine = gw.config.backends[0].url

        def served() -> set[str]:
            return {m["id"] for m in httpx.get(engine + "/v1/models").json()["data"]}

        assert "sql-lora" not in served()
        assert _chat(base, _heads("q1", "sql", "understand")).status_code == 200
        deadline = time.monotonic() + 30  # a guard against a hang, not a timing claim
        while "sql-lora" not in served():  # ordered when "understand" began
            assert time.monotonic() < deadline, "the adapter was not loaded ahead"
            time.sleep(0.02)
        assert _chat(base, _heads("q1", "sql", "write"), model="sql-lora").status_code == 200
        # An adapter no stage predicted is loaded when a call asks for it.
        assert _chat(base, {}, model="other-lora").status_code == 200
        text = httpx.get(base + "/metrics").text
        assert _metric(text, "hermes_prewarm_on_demand_total", target="sql-lora") == 0
        assert _metric(text, "hermes_prewarm_on_demand_total", target="other-lora") == 1
        assert served() >= {"sql-lora", "other-lora"}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"name": "d", "action": "http", "cold_start_s": 1}, "action 'http' needs 'hook'"),
        (
            {"name": "x", "action": "vllm-load-lora", "upstream": "e", "cold_start_s": 1},
            "needs 'lora_path'",
        ),
        (
            {"name": "m", "action": "vllm-wake-up", "upstream": "nope", "cold_start_s": 1},
            "no backend named 'nope'",
        ),
        (
            {
                "name": "x",
                "action": "vllm-load-lora",
                "upstream": "e",
                "lora_path": "/a",
                "cold_start_s": 1,
            },
            "list the adapter 'x' in the models of backend 'e'",
        ),
        (
            {"name": "d", "action": "http", "cold_start_s": 0, "hook": {"url": "http://h/w"}},
            "greater than 0",
        ),
        (
            {"name": "d", "action": "http", "cold_start_s": 1, "hook": {"url": "ftp://h"}},
            "url must start with http",
        ),
        (
            {
                "name": "d",
                "action": "http",
                "cold_start_s": 1,
                "hook": {"url": "http://h/w"},
                "upstream": "e",
            },
            "'upstream' has no meaning for action 'http'",
        ),
    ],
)
def test_bad_prewarm_targets_are_refused_with_the_field(
    target: dict[str, Any], message: str
) -> None:
    data = {
        "backends": [{"name": "e", "kind": "vllm", "url": "http://h:8000", "models": ["m"]}],
        "prewarm_targets": [target],
    }
    with pytest.raises((ValueError, ValidationError), match=re.escape(message)):
        gateway_config_from_dict(data)
