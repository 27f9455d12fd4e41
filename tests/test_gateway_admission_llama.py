"""`concurrency: auto` in front of a real inference server (issue 15, item 3): llama-cpp-python's
server, which serves one request at a time, behind the gateway. Its throughput does not grow
with the calls it holds (each one's time per token grows with their number): the admission
controller, fed only the gateway's own counts (the server has no vLLM /metrics), brings the
limit down from its ceiling to a few calls, and every call is still answered. Bounded in
time (15 s of load, up to 45 s while a loaded machine fits more slowly); no assertion on how
long anything took. Skipped unless llama-cpp-python's server is installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("llama_cpp")
_SERVER_DEPS = ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings", "uvicorn")
if any(importlib.util.find_spec(name) is None for name in _SERVER_DEPS):
    pytest.skip("llama-cpp-python's [server] extra is not installed", allow_module_level=True)

from hermes.gateway.config import Backend, GatewayConfig  # noqa: E402
from hermes.gateway.server import Gateway  # noqa: E402
from hermes.testing.gateway_thread import gateway_in_thread  # noqa: E402
from hermes.testing.llama_server import DEFAULT_MODEL_ALIAS, llama_server  # noqa: E402
from hermes.testing.tiny_gguf import write_tiny_llama  # noqa: E402

_MAX = 16
_LOAD_S = 15.0
_MAX_LOAD_S = 45.0  # a loaded machine fits more slowly: the load goes on until the limit settles
_SETTLED = 20  # samples (2 s) in a row at or below the few calls a serial server needs
_FEW = 4
_RATE = 20.0


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = write_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama.gguf")
    with llama_server(model, n_ctx=512, n_threads=1) as url:
        yield url


async def _load(base: str, gw: Gateway) -> tuple[list[str], list[int]]:
    """Poisson arrivals (`_RATE` a second) for `_LOAD_S`, and on (up to `_MAX_LOAD_S`) until
    the limit has stayed at `_FEW` or below for `_SETTLED` samples: what each call got, and the
    limit every 0.1 s. Long enough answers that even an idle machine's server cannot keep up,
    so calls pile up there and the fit sees the time per token grow with them."""
    rng = random.Random(5)
    results: list[str] = []
    limits: list[int] = []
    async with httpx.AsyncClient(timeout=120.0) as client:

        async def call() -> None:
            body = {
                "model": DEFAULT_MODEL_ALIAS,
                "messages": [{"role": "user", "content": "hi " * rng.randint(5, 40)}],
                "max_tokens": rng.randint(32, 96),
            }
            r = await client.post(base + "/v1/chat/completions", json=body)
            ok = r.status_code == 200 and b"choices" in r.content
            results.append("ok" if ok else f"{r.status_code}: {r.content[:120]!r}")

        def settled() -> bool:
            return len(limits) >= _SETTLED and max(limits[-_SETTLED:]) <= _FEW

        tasks = []
        start = nxt = last = time.monotonic()
        while (now := time.monotonic()) < start + _MAX_LOAD_S:
            if now >= start + _LOAD_S and settled():
                break
            while nxt <= now:
                tasks.append(asyncio.ensure_future(call()))
                nxt += rng.expovariate(_RATE)
            if now - last >= 0.1:
                last = now
                limits.append(gw.dispatcher.limit_of("llama"))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
    return results, limits


def test_auto_limit_finds_a_serial_servers_knee(server_url: str) -> None:
    backend = Backend(
        name="llama",
        kind="llamacpp",
        url=server_url,
        models=[DEFAULT_MODEL_ALIAS],
        max_concurrency=_MAX,  # concurrency: auto, the default
        health_path="/v1/models",
    )
    with gateway_in_thread(GatewayConfig(port=0, policy="vllm", backends=[backend])) as (gw, base):
        results, limits = asyncio.run(_load(base, gw))
        state = gw.admission.admission("llama").describe()
        sample = gw.admission.engine_sample("llama")
    assert results
    assert [r for r in results if r != "ok"] == []
    assert sample is None  # no vLLM /metrics there: the gateway's own counts fed it
    assert limits[0] == _MAX
    assert all(1 <= lim <= _MAX for lim in limits)
    # One call at a time makes as many tokens a second as many do: the fit finds the time per
    # token growing with the calls held, a knee below the ceiling, and keeps a few in flight.
    assert isinstance(state["knee"], int)
    assert state["knee"] < _MAX, state
    assert max(limits[-_SETTLED:]) <= _FEW, limits
