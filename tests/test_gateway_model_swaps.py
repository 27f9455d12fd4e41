"""Model swaps in the gateway: models that share GPUs take turns as the QLM planner orders,
on emulated vLLM servers in sleep mode and on a fake llama.cpp router; failures end the calls
that wait for a model with 503; the SLO class of a call from its model's default."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hermes.config_base import ConfigError
from hermes.gateway.config import GatewayConfig, GpuGroup, gateway_config_from_dict
from hermes.gateway.dispatch import Dispatcher, Upstream
from hermes.gateway.model_swaps import ModelSwapper
from hermes.gateway.swap_actuators import Member
from hermes.policies.qlm import (
    GroupKey,
    GroupView,
    InstanceView,
    QLMOptions,
    QLMPolicy,
)
from hermes.policies.registry import make_queue_policy
from hermes.testing.asgi_thread import serving
from hermes.testing.gateway_thread import gateway_in_thread
from test_gateway_server import FakeUpstream, fake, gateway  # noqa: F401


def _emulated(name: str, model: str) -> dict[str, Any]:
    return {"name": name, "kind": "emulated", "models": [model], "time_scale": 0.01}


def _two_models(**kw: Any) -> GatewayConfig:
    return gateway_config_from_dict(
        {
            "port": 0,
            "policy": "vllm",
            "backends": [_emulated("ea", "a"), _emulated("eb", "b")],
            "gpu_groups": [{"name": "gpu0", "backends": ["ea", "eb"]}],
            **kw,
        }
    )


def _chat(base: str, model: str, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi " * 20}], "max_tokens": 8}
    return httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def _metric(base: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if m is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _sleeping(url: str) -> bool:
    return bool(httpx.get(url + "/is_sleeping", timeout=5).json()["is_sleeping"])


# Configuration ---------------------------------------------------------------------------------


def _config(**kw: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "va", "url": "http://h:1", "models": ["a"]},
            {"name": "vb", "url": "http://h:2", "models": ["b"]},
            {"name": "sg", "kind": "sglang", "url": "http://h:3", "models": ["c"]},
            {"name": "two", "url": "http://h:4", "models": ["d", "e"]},
            {"name": "cpp", "kind": "llamacpp", "url": "http://h:5", "models": ["x", "y"]},
        ],
        **kw,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"gpu_groups": [{"name": "g", "backends": ["va", "nope"]}]}, "no backend named 'nope'"),
        ({"gpu_groups": [{"name": "g", "backends": ["va", "sg"]}]}, "'sg' is of kind 'sglang'"),
        ({"gpu_groups": [{"name": "g", "backends": ["va"]}]}, "at least 2 backends"),
        ({"gpu_groups": [{"name": "g", "backends": ["va", "two"]}]}, "serves exactly one"),
        (
            {
                "gpu_groups": [
                    {"name": "g", "backends": ["va", "vb"]},
                    {"name": "h", "backends": ["vb", "va"]},
                ]
            },
            "'vb' is in gpu group 'g' already",
        ),
        (
            {"gpu_groups": [{"name": "g", "kind": "llamacpp-router", "backends": ["va"]}]},
            "needs a llamacpp backend",
        ),
        (
            {"gpu_groups": [{"name": "g", "kind": "llamacpp-router", "backends": ["cpp", "va"]}]},
            "is one llama.cpp server",
        ),
        ({"gpu_groups": [{"name": "g", "backends": ["va", "vb"], "sleep_level": 3}]}, "1 or 2"),
        ({"model_slo_class": {"zz": "rt"}}, "no backend serves model 'zz'"),
        ({"model_slo_class": {"a": "urgent"}}, "model_slo_class"),
        ({"slo_s": {"rt": -1}}, "slo_s.rt"),
        (
            {
                "gpu_groups": [{"name": "g", "backends": ["va", "vb"]}],
                "prewarm_targets": [
                    {"name": "a", "action": "vllm-wake-up", "upstream": "va", "cold_start_s": 1}
                ],
            },
            "whose model swaps decide when it sleeps",
        ),
    ],
)
def test_gpu_groups_and_slo_defaults_are_checked(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        gateway_config_from_dict(_config(**extra))


def test_swap_estimates_default_by_sleep_level() -> None:
    assert GpuGroup(name="g", backends=["a", "b"]).swap_estimate_s == 1.0
    assert GpuGroup(name="g", backends=["a", "b"], sleep_level=2).swap_estimate_s == 10.0
    assert GpuGroup(name="g", backends=["a", "b"], swap_s=3.5).swap_estimate_s == 3.5
    cfg = gateway_config_from_dict(_config(model_slo_class={"a": "rt"}, slo_s={"rt": 5}))
    assert cfg.slo_class_of("a", None) == "rt"
    assert cfg.slo_class_of("a", "be") == "be"  # the header wins
    assert cfg.slo_class_of("b", None) == "be"
    assert (cfg.slo_seconds("rt"), cfg.slo_seconds("be")) == (5.0, 3600.0)


def test_an_upstream_takes_calls_only_for_the_models_it_has_loaded() -> None:
    d = Dispatcher([Upstream("u", frozenset({"a", "b"}), 2)])
    assert d.set_loaded("u", ["a"]) == []
    _, grants = d.submit("k1", "b", 0.0)
    assert grants == []
    assert d.queued == 1
    _, grants = d.submit("k2", "a", 0.0)
    assert [g.call.key for g in grants] == ["k2"]
    grants = d.set_loaded("u", ["b"])
    assert [g.call.key for g in grants] == ["k1"]
    assert d.loaded("u") == frozenset({"b"})
    with pytest.raises(ValueError, match="does not serve"):
        d.set_loaded("u", ["z"])


class _FakeActuator:
    """Swaps at once, and records them."""

    def __init__(self, awake: list[bool]) -> None:
        self.awake = awake
        self.log: list[tuple[str, str]] = []

    async def probe(self, members: Sequence[Member]) -> list[bool]:
        return self.awake

    async def deactivate(self, member: Member) -> str | None:
        self.log.append(("off", member.model))
        return None

    async def activate(self, member: Member) -> str | None:
        self.log.append(("on", member.model))
        return None


def test_the_planner_swaps_for_the_earliest_deadline_once_the_active_model_drains() -> None:
    cfg = gateway_config_from_dict(
        _config(gpu_groups=[{"name": "g", "backends": ["va", "vb"]}], slo_s={"rt": 5})
    )
    d = Dispatcher([Upstream("va", frozenset({"a"}), 1), Upstream("vb", frozenset({"b"}), 1)])
    now = [0.0]
    granted: list[str] = []
    deadlines: dict[Hashable, float] = {}

    def submit(key: str, model: str, rt: bool, deadline: float) -> None:
        deadlines[key] = deadline
        _, grants = d.submit(key, model, 0.0, rt)
        granted.extend(str(g.call.key) for g in grants)

    async def main() -> None:
        swapper = ModelSwapper(
            cfg,
            d,
            {},
            CollectorRegistry(),
            lambda: now[0],
            lambda grants: granted.extend(str(g.call.key) for g in grants),
            lambda w: deadlines[w.key],
            lambda model, message: 0,
        )
        actuator = _FakeActuator([True, False])
        (group,) = swapper.groups
        group.actuator = actuator
        await swapper.start()
        assert (d.loaded("va"), d.loaded("vb")) == (frozenset({"a"}), frozenset())
        submit("a1", "a", False, 3600.0)  # runs on va
        submit("a2", "a", False, 3601.0)  # waits for va's slot
        submit("b1", "b", False, 3700.0)  # a later deadline: va serves a2 first
        swapper.tick()
        assert group.target is None
        assert granted == ["a1"]
        submit("b2", "b", True, 5.0)  # real-time, due first: b goes next, once va drains
        swapper.tick()
        assert group.target is not None
        assert group.target.model == "b"
        assert d.loaded("va") == frozenset()  # draining: a2 stays queued
        assert actuator.log == []
        granted.extend(str(g.call.key) for g in d.release("va"))
        swapper.on_ended("va", "a", "be", 100, True)
        await asyncio.gather(*swapper._tasks)
        assert actuator.log == [("off", "a"), ("on", "b")]
        assert granted == ["a1", "b2"]  # b's calls by priority then arrival (one slot)
        await swapper.close()

    asyncio.run(main())


def _swapper(dispatcher: Dispatcher, options: QLMOptions | None = None) -> ModelSwapper:
    cfg = gateway_config_from_dict(_config(gpu_groups=[{"name": "g", "backends": ["va", "vb"]}]))
    return ModelSwapper(
        cfg,
        dispatcher,
        {},
        CollectorRegistry(),
        lambda: 0.0,
        lambda grants: None,
        lambda w: 0.0,
        lambda model, message: 0,
        options,
    )


def test_the_gateway_and_the_simulator_plan_alike_from_the_same_options() -> None:
    """One QLMOptions builds the planner of the gateway's model swaps and of the simulator's
    `qlm` policy; both plan the same groups the same way, and learn output lengths alike."""
    o = QLMOptions(
        violation_probability=0.1,
        prior_output_mean=100.0,
        prior_output_std=50.0,
        class_weights=(("rt", 3.0),),
        time_limit_s=5.0,  # ample: the plans must not depend on the machine's speed
    )
    d = Dispatcher([Upstream("va", frozenset({"a"}), 1), Upstream("vb", frozenset({"b"}), 1)])
    gateway = _swapper(d, o).planner
    policy = make_queue_policy("qlm", o)
    assert isinstance(policy, QLMPolicy)
    assert type(gateway) is type(policy.planner)
    assert gateway.options == policy.planner.options == o
    groups = [
        GroupView(i, GroupKey(model, cls, 0), size, due)
        for i, (model, cls, size, due) in enumerate(
            [("a", "be", 40, 3.0), ("b", "rt", 10, 2.0), ("a", "rt", 5, 4.0), ("b", "be", 60, 6.0)]
        )
    ]
    instances = [
        InstanceView("g0", "a", frozenset({"a", "b"}), {"a": 1.0, "b": 1.0}, 2000.0, 0.5),
        InstanceView("g1", None, frozenset(), {"a": 10.0, "b": 10.0}, 1500.0),
    ]
    plan = gateway.plan(groups, instances, 0.0)
    assert plan == policy.planner.plan(groups, instances, 0.0)
    assert plan.solver == "milp"  # EDF predicts avoidable violations: the MILP does better
    for planner in (gateway, policy.planner):
        planner.stats.observe(GroupKey("a", "be", 0), 300.0)
    assert gateway.plan(groups, instances, 0.0) == policy.planner.plan(groups, instances, 0.0)


def test_the_gateway_plans_with_the_default_options_and_learns_from_ended_calls() -> None:
    d = Dispatcher([Upstream("va", frozenset({"a"}), 1), Upstream("vb", frozenset({"b"}), 1)])
    swapper = _swapper(d)
    assert swapper.planner.options == QLMOptions()
    swapper.on_ended("va", "a", "be", 120, True)
    swapper.on_ended("va", "a", "be", 999, False)  # not answered: not learned from
    assert swapper.stats.count(GroupKey("a", "be", 0)) == 1
    assert swapper.stats.mean(GroupKey("a", "be", 0)) == 120.0


# vLLM sleep mode (emulated) -----------------------------------------------------------------


def test_a_call_for_the_sleeping_model_swaps_it_in_and_the_other_to_sleep() -> None:
    with gateway_in_thread(_two_models()) as (gw, base):
        ea, eb = gw.clients["ea"].url, gw.clients["eb"].url
        # At start the first member is awake, the other asleep.
        assert (_sleeping(ea), _sleeping(eb)) == (False, True)
        assert _metric(base, "hermes_gpu_group_active", group="gpu0", model="a") == 1
        r = _chat(base, "b")
        assert r.status_code == 200, r.text
        assert (_sleeping(ea), _sleeping(eb)) == (True, False)
        assert _metric(base, "hermes_model_swaps_total", group="gpu0", to="b", result="ok") == 1
        assert _metric(base, "hermes_gpu_group_active", group="gpu0", model="b") == 1
        assert _metric(base, "hermes_gpu_group_active", group="gpu0", model="a") == 0
        assert _metric(base, "hermes_model_swap_seconds_count") == 1
        # The awake model keeps being served, with no more swaps.
        for _ in range(3):
            assert _chat(base, "b").status_code == 200
        assert _metric(base, "hermes_model_swaps_total") == 1


def test_interleaved_bursts_are_all_answered_with_fewer_swaps_than_calls() -> None:
    with gateway_in_thread(_two_models()) as (_gw, base):
        models = [m for _ in range(8) for m in ("a", "b")]
        statuses: list[int] = []
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for _ in range(3):
                statuses += [r.status_code for r in pool.map(lambda m: _chat(base, m), models)]
        assert statuses == [200] * 48
        assert _metric(base, "hermes_request_success_total", finished_reason="stop") == 48
        swaps = _metric(base, "hermes_model_swaps_total", result="ok")
        # Calls served together: alternating a, b one by one would swap for nearly every call.
        # (A bound of 48 / 4 failed now and then on a loaded machine, where a burst's calls
        # reach the gateway spread out.)
        assert 1 <= swaps < 48 / 2, swaps
        assert _metric(base, "hermes_model_swaps_total", result="error") == 0


class _NoWake:
    """A vLLM server asleep whose wake-up fails."""

    def __init__(self) -> None:
        self.wake_ups = 0
        self.app = Starlette(
            routes=[
                Route("/is_sleeping", lambda r: JSONResponse({"is_sleeping": True})),
                Route("/health", lambda r: Response()),
                Route("/sleep", lambda r: Response(), methods=["POST"]),
                Route("/wake_up", self.wake_up, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    async def wake_up(self, request: Request) -> Response:
        self.wake_ups += 1
        return JSONResponse({"error": "CUDA out of memory"}, status_code=500)

    async def chat(self, request: Request) -> Response:
        return JSONResponse({"error": "asleep"}, status_code=503)


def test_a_model_that_cannot_be_woken_fails_its_calls_with_503_in_bounded_time() -> None:
    broken = _NoWake()
    with serving(broken.app) as url:
        cfg = gateway_config_from_dict(
            {
                "port": 0,
                "policy": "vllm",
                "queue_timeout_s": 1.0,
                "backends": [
                    _emulated("ea", "a"),
                    {"name": "fb", "kind": "vllm", "url": url, "models": ["b"]},
                ],
                "gpu_groups": [{"name": "gpu0", "backends": ["ea", "fb"]}],
            }
        )
        with gateway_in_thread(cfg) as (gw, base):
            began = time.monotonic()
            r = _chat(base, "b")
            waited = time.monotonic() - began
            assert r.status_code == 503, r.text
            assert "'b'" in r.json()["error"]["message"]
            assert "wake_up answered HTTP 500" in r.json()["error"]["message"]
            assert waited >= 1.0  # not before its bound; how long after, the host decides
            assert broken.wake_ups >= 1
            assert _metric(base, "hermes_model_swaps_total", to="b", result="error") >= 1
            assert _metric(base, "hermes_request_success_total", finished_reason="error") == 1
            # The previous model was woken again, and is served.
            assert not _sleeping(gw.clients["ea"].url)
            assert _chat(base, "a").status_code == 200
            assert _metric(base, "hermes_gpu_group_active", group="gpu0", model="a") == 1


# llama.cpp's router mode ----------------------------------------------------------------------


class _Router:
    """llama-server in router mode: one model loaded at a time, loads in the background."""

    def __init__(self, models: list[str], loaded: str) -> None:
        self.status = dict.fromkeys(models, "unloaded")
        self.status[loaded] = "loaded"
        self.log: list[tuple[str, str]] = []
        self.wrong: list[str] = []  # calls for a model not loaded
        self.tasks: set[asyncio.Task[None]] = set()
        self.app = Starlette(
            routes=[
                Route("/models", self.models),
                Route("/health", lambda r: Response()),
                Route("/models/load", self.load, methods=["POST"]),
                Route("/models/unload", self.unload, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        data = [{"id": m, "status": {"value": s}} for m, s in self.status.items()]
        return JSONResponse({"data": data})

    async def load(self, request: Request) -> Response:
        model = (await request.json())["model"]
        self.log.append(("load", model))
        self.status[model] = "loading"

        async def finish() -> None:
            await asyncio.sleep(0.05)
            self.status[model] = "loaded"

        task = asyncio.get_running_loop().create_task(finish())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return JSONResponse({"success": True})

    async def unload(self, request: Request) -> Response:
        model = (await request.json())["model"]
        self.log.append(("unload", model))
        self.status[model] = "unloaded"
        return JSONResponse({"success": True})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        if self.status.get(body["model"]) != "loaded":
            self.wrong.append(body["model"])
            return JSONResponse({"error": "model not loaded"}, status_code=400)
        msg = {"role": "assistant", "content": "ok"}
        return JSONResponse(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )


@pytest.fixture
def router() -> Iterator[tuple[_Router, str]]:
    fake_router = _Router(["x", "y"], loaded="x")
    with serving(fake_router.app) as url:
        yield fake_router, url


def test_a_llamacpp_router_unloads_and_loads_models_in_turn(router: tuple[_Router, str]) -> None:
    fake_router, url = router
    cfg = gateway_config_from_dict(
        {
            "port": 0,
            "policy": "vllm",
            "backends": [{"name": "cpp", "kind": "llamacpp", "url": url, "models": ["x", "y"]}],
            "gpu_groups": [{"name": "box", "kind": "llamacpp-router", "backends": ["cpp"]}],
        }
    )
    with gateway_in_thread(cfg) as (_gw, base):
        assert fake_router.log == []  # x was loaded already
        assert _chat(base, "x").status_code == 200
        assert _chat(base, "y").status_code == 200
        assert fake_router.log == [("unload", "x"), ("load", "y")]
        assert _chat(base, "x").status_code == 200
        assert fake_router.log[2:] == [("unload", "y"), ("load", "x")]
        assert fake_router.wrong == []
        assert _metric(base, "hermes_model_swaps_total", group="box", result="ok") == 2
        assert _metric(base, "hermes_gpu_group_active", group="box", model="x") == 1


# The SLO class from the model ----------------------------------------------------------------


def test_a_models_default_slo_class_makes_its_calls_real_time_without_the_header(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    up, url = fake
    with gateway(url, model_slo_class={"m": "rt"}) as (_gw, base):
        assert _chat(base, "m").status_code == 200
        assert _chat(base, "m", **{"x-hermes-slo-class": "be"}).status_code == 200
    plain, tagged = (b["priority"] for b in up.seen)
    # Real-time calls lead at the engine by 1e9 s (1e12 in engine priority units).
    assert plain < -1e11 < tagged
