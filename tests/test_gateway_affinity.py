"""Session affinity in the gateway: an application's calls go back to the replica that served
it (within a load bound), and on llama.cpp upstreams to its slot, with cache_prompt."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hermes.gateway.affinity import MostFree, SessionRouter, SlotAffinity, router_for
from hermes.gateway.calls import Call
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.dispatch import Dispatcher, Upstream
from hermes.gateway.server import Gateway
from hermes.testing.asgi_thread import serving

# Routing in the dispatcher ---------------------------------------------------------------------


def _app_of(key: Hashable) -> Hashable:
    return cast(tuple[Hashable, int], key)[0]


def _dispatcher(max_excess: int = 1) -> tuple[Dispatcher, SessionRouter]:
    router = SessionRouter(frozenset({"u0", "u1"}), max_excess, session_of=_app_of)
    ups = [Upstream("u0", frozenset({"m"}), 8), Upstream("u1", frozenset({"m"}), 8)]
    return Dispatcher(ups, router=router), router


def _grant(d: Dispatcher, key: tuple[Hashable, int]) -> str:
    _, grants = d.submit(key, "m", 0.0)
    [g] = grants
    return g.upstream


def test_an_application_comes_back_to_its_replica_within_the_bound() -> None:
    d, router = _dispatcher(max_excess=1)
    assert _grant(d, ("a", 0)) == "u0"  # both free: the most free slots, the first
    assert _grant(d, ("b", 0)) == "u1"  # u0 is busier now
    assert _grant(d, ("a", 1)) == "u0"  # as busy as u1
    assert _grant(d, ("a", 2)) == "u0"  # 1 call over u1's: within the bound
    assert _grant(d, ("a", 3)) == "u1"  # 2 over: the guard sends it to the least loaded
    assert (router.kept, router.moved) == (2, 1)
    assert router.home("a") == "u1"  # which is its replica from now on
    assert _grant(d, ("c", 0)) == "u1"  # a new application: the most free slots


def test_a_freed_slot_still_goes_to_the_best_ranked_call() -> None:
    ups = [Upstream("u0", frozenset({"m"}), 1), Upstream("u1", frozenset({"m"}), 1)]
    router = SessionRouter(frozenset({"u0", "u1"}), 4, session_of=_app_of)
    d = Dispatcher(ups, router=router)
    d.submit(("a", 0), "m", 0.0)  # u0
    d.submit(("b", 0), "m", 0.0)  # u1
    d.submit(("b", 1), "m", 5.0)  # waits
    d.submit(("a", 1), "m", 1.0)  # waits, ranked first
    [g] = d.release("u1")  # b's replica frees: a's call (better ranked) takes it
    assert (g.call.key, g.upstream) == (("a", 1), "u1")
    assert router.home("a") == "u1"


def test_router_for_picks_session_only_when_a_backend_asks() -> None:
    plain = Backend(name="x", url="http://h", models=["m"])
    sticky = Backend(name="y", url="http://h", models=["m"], router="session")
    assert isinstance(router_for([plain], 8), MostFree)
    r = router_for([plain, sticky], 3)
    assert isinstance(r, SessionRouter)
    assert (r.sticky, r.max_excess) == (frozenset({"y"}), 3)


# llama.cpp slots ------------------------------------------------------------------------------


def _call(app_id: str, ephemeral: bool = False) -> Call:
    app = SimpleNamespace(app_id=app_id, ephemeral=ephemeral)
    ticket = SimpleNamespace(app=app)
    return cast(Call, SimpleNamespace(ticket=ticket, ended=False, upstream="l0"))


def _llama(concurrency: int = 2) -> SlotAffinity:
    b = Backend(
        name="l0",
        kind="llamacpp",
        url="http://h",
        models=["m"],
        concurrency=concurrency,
        router="session",
    )
    return SlotAffinity([b, Backend(name="v", url="http://h", models=["m"], router="session")])


def test_each_call_takes_a_slot_its_application_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    from hermes.gateway import affinity

    monkeypatch.setattr(affinity, "app_session", lambda key: key.app.app_id)
    s = _llama()
    a1, b1 = _call("a"), _call("b")
    assert s.fields(a1, "l0") == {"cache_prompt": True, "id_slot": 0}
    assert s.fields(b1, "l0") == {"cache_prompt": True, "id_slot": 1}
    assert s.fields(a1, "l0")["id_slot"] == 0  # sent again: the same slot
    a2 = _call("a")
    assert "id_slot" not in s.fields(a2, "l0")  # both slots held: llama.cpp chooses
    cast(Any, a1).ended = True
    assert s.fields(a2, "l0")["id_slot"] == 0  # its application's slot, free again
    cast(Any, b1).upstream = None  # b's call left the upstream
    cast(Any, a2).ended = True
    c = _call("c")
    assert s.fields(c, "l0")["id_slot"] == 1  # the slot used longest ago
    assert s.fields(_call("a"), "v") == {}  # not llama.cpp: nothing


# Over HTTP ----------------------------------------------------------------------------------------


def _recording_upstream(name: str, seen: list[tuple[str, dict[str, Any]]]) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append((name, body))
        msg = {"role": "assistant", "content": "ok"}
        return JSONResponse(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


@contextmanager
def _two_llamas(seen: list[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    with (
        serving(_recording_upstream("l0", seen)) as u0,
        serving(_recording_upstream("l1", seen)) as u1,
    ):
        backends = [
            Backend(name=n, kind="llamacpp", url=u, models=["m"], concurrency=2, router="session")
            for n, u in (("l0", u0), ("l1", u1))
        ]
        gw = Gateway(GatewayConfig(backends=backends, policy="parrot"))
        with serving(gw.app) as base:
            yield base


def test_an_applications_calls_keep_their_llama_cpp_replica_and_slot() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    with _two_llamas(seen) as base:
        for app in ("a", "b", "a", "b", "a"):
            r = httpx.post(
                base + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "q"}]},
                headers={"x-hermes-app-id": app, "x-hermes-stage": "think"},
            )
            assert r.status_code == 200, r.text
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "q"}]},
        )
        assert r.status_code == 200
    where = [(n, b.get("id_slot"), b.get("cache_prompt")) for n, b in seen]
    # One call at a time: both replicas free each time, so the first; a and b each keep a slot.
    a, b = ("l0", 0, True), ("l0", 1, True)
    assert where[:5] == [a, b, a, b, a]
    assert where[5] == ("l0", None, True)  # a plain call: the prompt cache, no slot of its own
