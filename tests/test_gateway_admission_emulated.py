"""`concurrency: auto` against a `hermes emulate` process (issue 15, item 3): the gateway scrapes
the emulator's vLLM-style /metrics, feeds its admission controller, and the limit it sets
comes down from its ceiling to what the load needs while every call is answered. Bounded in
time (about 15 s of load); no assertion on how long anything took."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import pytest

from hermes.gateway.config import gateway_config_from_dict
from hermes.gateway.server import Gateway
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.testing.ports import free_port
from hermes.testing.prometheus_text import metric_sum

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

_CLI = [sys.executable, "-c", "from hermes.cli import main; main()"]
_MAX = 48  # max_concurrency: the controller's ceiling
_LOAD_S = 15.0


@contextmanager
def _emulator(time_scale: str) -> Iterator[str]:
    port = free_port()
    args = ["emulate", "--model", "m", "--port", str(port), "--time-scale", time_scale]
    proc = subprocess.Popen([*_CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("hermes emulate did not answer within 60 s")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


async def _load(base: str, gw: Gateway) -> tuple[list[str], list[tuple[int, int]]]:
    """Poisson arrivals (about 8 calls a second, a third streamed) for `_LOAD_S`; what each
    call got, and (limit, calls in flight) sampled every 0.1 s."""
    rng = random.Random(3)
    results: list[str] = []
    samples: list[tuple[int, int]] = []
    async with httpx.AsyncClient(timeout=120.0) as client:

        async def call() -> None:
            stream = rng.random() < 0.33
            body = {
                "model": "m",
                "prompt": "x " * rng.randint(50, 300),
                "max_tokens": rng.randint(16, 160),
                "stream": stream,
            }
            r = await client.post(base + "/v1/completions", json=body)
            ok = r.status_code == 200 and (
                b"[DONE]" in r.content if stream else b"choices" in r.content
            )
            results.append("ok" if ok else f"{r.status_code}: {r.content[:120]!r}")

        tasks = []
        end = time.monotonic() + _LOAD_S
        nxt = last = time.monotonic()
        while (now := time.monotonic()) < end:
            while nxt <= now:
                tasks.append(asyncio.ensure_future(call()))
                nxt += rng.expovariate(8.0)
            if now - last >= 0.1:
                last = now
                samples.append((gw.dispatcher.limit_of("up"), gw.dispatcher.busy("up")))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
    return results, samples


def test_auto_limit_comes_down_to_what_the_load_needs_and_every_call_is_answered() -> None:
    with _emulator("0.25") as url:
        backend: dict[str, Any] = {
            "name": "up",
            "kind": "vllm",
            "url": url,
            "models": ["m"],
            "max_concurrency": _MAX,
        }  # concurrency: auto, the default
        cfg = gateway_config_from_dict({"port": 0, "policy": "vllm", "backends": [backend]})
        assert cfg.backends[0].concurrency == "auto"
        with gateway_in_thread(cfg) as (gw, base):
            results, samples = asyncio.run(_load(base, gw))
            metrics = httpx.get(base + "/metrics").text
            sample = gw.admission.engine_sample("up")
            state = gw.admission.admission("up").describe()
    assert results
    assert [r for r in results if r != "ok"] == []
    # The emulator's /metrics was read: the engine's own counts fed the controller.
    assert sample is not None
    assert sample.generation_tokens > 0
    # The controller fitted the engine and kept its limit within [1, max_concurrency] ...
    assert "iteration_a_s" in state
    limits = [lim for lim, _ in samples]
    assert all(1 <= lim <= _MAX for lim in limits)
    assert all(busy <= _MAX for _, busy in samples)  # never more in flight than the ceiling
    # ... and came down from the ceiling it starts at (what the engine would take): on an
    # engine whose iteration time grows with its batch, fewer calls than max_concurrency keep
    # its throughput (the knee it measured is below the ceiling), and this load keeps under
    # about 10 calls in flight.
    assert limits[0] == _MAX
    tail = limits[-len(limits) // 4 :]
    assert max(tail) < _MAX, limits
    assert isinstance(state["knee"], int)
    assert state["knee"] < _MAX
    assert 1 <= metric_sum(metrics, "hermes_upstream_concurrency_limit", upstream="up") <= _MAX
