"""The gateway on Ray (`hermes serve --ray`): how many calls the scheduler actor orders per
second with 10,000 queued, and what the Ray path adds to a call's latency against the
single-process gateway.

    python benchmarks/ray_scheduler.py [--json OUT] [--queued 10000] [--rounds 40] [--calls 300]

Decisions: a scheduler actor on a local Ray (2 CPUs) with `queued` calls waiting behind full
upstream slots; each batch from the benchmark's "replica" carries B releases of running calls
(each slot freed goes to the best-ranked waiting call: a grant) and B new calls (each placed
in policy order), so the queue stays at its size. Calls ordered per second = grants per
second of wall time, by batch size B (B = 1: one actor round trip per call, what an unbatched
design would get). The same core in-process (no Ray) is the floor.

Latency: one client sends `calls` chat calls one after another (kept-alive connection) to an
upstream that answers at once, through (a) the single-process gateway, (b) the Ray gateway's
parts in one process (`ray_serve.local`: the scheduler protocol without Ray), (c) the gateway
on Ray Serve with 2 ingress replicas, and (d) a bare Ray Serve deployment answering the same
bytes itself (Serve's own proxy hop, no Hermes). Reported: p50 and p90 per path and the
added p50 of (c) over (a).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx

from hermes.gateway.config import Backend, GatewayConfig, RayOptions
from hermes.gateway.context import CallContext
from hermes.ray_serve.local import LocalRayGateway
from hermes.ray_serve.protocol import Op, Release, Submit
from hermes.ray_serve.scheduler import SchedulerCore
from hermes.testing.asgi_thread import serving
from hermes.testing.blocking_upstream import BlockingUpstream
from hermes.testing.gateway_thread import gateway_in_thread

OUT = Path(__file__).resolve().parent / "results" / "ray" / "scheduler.json"
SLOTS = 64  # the upstream's concurrency: calls running while `queued` wait
# gittins: dynamic, a ranking round over every waiting call each rank_interval_s (0.1 s);
# vllm: first come, first served, no rounds: the actor's grant path alone.
POLICIES = ("gittins", "vllm")


def config(url: str, port: int, queued: int, policy: str = "gittins") -> GatewayConfig:
    backend = Backend(name="u0", kind="vllm", url=url, models=["m"], concurrency=SLOTS)
    return GatewayConfig(
        port=port,
        policy=policy,
        backends=[backend],
        queue_limit=queued + 10_000,
        queue_timeout_s=3600,
        ray=RayOptions(num_cpus=2, ingress_replicas=2),
    )


def _ctx(i: int) -> CallContext:
    return CallContext(f"app{i}", "bench", "s", None, None)


class _Driver:
    """Keeps the queue at `queued` and measures grants per second by batch size; `step` is
    the actor's or the core's."""

    def __init__(self, step: Any, queued: int) -> None:
        self.step = step
        self.next_id = 0
        self.running: list[int] = []
        self.queued = queued

    def _submits(self, n: int) -> list[Op]:
        ops: list[Op] = [
            Submit(self.next_id + i, _ctx(self.next_id + i), "m", 50) for i in range(n)
        ]
        self.next_id += n
        return ops

    async def fill(self) -> None:
        total = SLOTS + self.queued
        while self.next_id < total:
            reply = await self.step("bench", self._submits(min(1000, total - self.next_id)))
            self.running += [g.call_id for g in reply.granted]

    async def rate(self, batch: int, rounds: int) -> float:
        """Grants per second of wall time over `rounds` batches of `batch`."""
        grants = 0
        start = time.perf_counter()
        for _ in range(rounds):
            done, self.running = self.running[:batch], self.running[batch:]
            ops: list[Op] = [
                Release(c, "stop", {"prompt_tokens": 50, "completion_tokens": 20}) for c in done
            ]
            reply = await self.step("bench", ops + self._submits(batch))
            self.running += [g.call_id for g in reply.granted]
            grants += len(reply.granted)
        return grants / (time.perf_counter() - start)


def _rounds(batch: int, rounds: int) -> int:
    return max(rounds, 500 // batch)


async def _core_rates(
    url: str, queued: int, batches: list[int], rounds: int, policy: str
) -> dict[str, Any]:
    """Grants per second of the core in this process, started (its ranking rounds, aging and
    health loops run, as in the actor), by batch size."""
    core = SchedulerCore.from_config(config(url, 0, queued, policy))
    await core.start()

    async def step(replica: str, ops: list[Op]) -> Any:
        return await core.step(replica, ops)

    d = _Driver(step, queued)
    await d.fill()
    out: dict[str, Any] = {}
    for b in batches:
        n, cpu = _rounds(b, rounds), time.process_time()
        wall = await d.rate(b, n)
        out[str(b)] = {"per_wall_s": wall, "per_cpu_s": n * b / (time.process_time() - cpu)}
    await core.stop()
    return out


async def _actor_rates(handle: Any, queued: int, batches: list[int], rounds: int) -> dict[str, Any]:
    """As `_core_rates`, through the actor; CPU seconds are the actor process's own."""
    from hermes.ray_serve.actor import ActorRemote

    d = _Driver(ActorRemote(handle).step, queued)
    await d.fill()
    stats = await handle.stats.remote()
    assert stats["queued"] == queued, stats
    out: dict[str, Any] = {}
    for b in batches:
        n = _rounds(b, rounds)
        cpu = (await handle.stats.remote())["cpu_s"]
        wall = await d.rate(b, n)
        used = (await handle.stats.remote())["cpu_s"] - cpu
        out[str(b)] = {"per_wall_s": wall, "per_actor_cpu_s": n * b / used}
    return out


def _latencies(base: str, calls: int) -> dict[str, float]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    times = []
    with httpx.Client(base_url=base, timeout=60) as c:
        for i in range(calls + 20):
            t = time.perf_counter()
            r = c.post("/v1/chat/completions", json=body)
            dt = time.perf_counter() - t
            assert r.status_code == 200, r.text
            if i >= 20:  # warm-up: connections, first calls' imports
                times.append(dt * 1e3)
    q = statistics.quantiles(times, n=10)
    return {"p50_ms": statistics.median(times), "p90_ms": q[8], "calls": calls}


def _bare_serve_p50(calls: int) -> dict[str, float]:
    """Ray Serve's proxy and one replica answering the upstream's bytes itself."""
    from ray import serve

    upstream = BlockingUpstream(is_open=True)

    @serve.deployment(
        num_replicas=2,
        ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    @serve.ingress(upstream.app)
    class Bare:
        pass

    serve.run(Bare.bind(), name="bare", route_prefix="/")  # type: ignore[attr-defined]
    try:
        return _latencies(_serve_url(), calls)
    finally:
        serve.delete("bare")


_PORT: list[int] = []


def _serve_url() -> str:
    return f"http://127.0.0.1:{_PORT[0]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray

        from hermes.ray_serve.actor import start_scheduler
        from hermes.ray_serve.deployment import deploy, undeploy

    batches = [1, 10, 100]
    result: dict[str, Any] = {
        "queued": args.queued,
        "slots": SLOTS,
        "calls_per_s": {},
        "machine": {
            "cpus": os.cpu_count(),
            "load_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "ray": ray.__version__,
        },
    }
    upstream = BlockingUpstream(is_open=True)
    with serving(upstream.app) as url:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            _PORT.append(s.getsockname()[1])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="hermes")
        try:
            for policy in POLICIES:
                print(f"{policy}: in-process core ...", file=sys.stderr, flush=True)
                core = asyncio.run(_core_rates(url, args.queued, batches, args.rounds, policy))
                print(f"{policy}: actor ...", file=sys.stderr, flush=True)
                handle = start_scheduler(config(url, _PORT[0], args.queued, policy), policy)
                actor = asyncio.run(_actor_rates(handle, args.queued, batches, args.rounds))
                ray.kill(handle, no_restart=True)
                result["calls_per_s"][policy] = {"core": core, "actor": actor}
                print(result["calls_per_s"][policy], file=sys.stderr, flush=True)
            lat: dict[str, Any] = {}
            print("latency: single process ...", file=sys.stderr, flush=True)
            with gateway_in_thread(config(url, 0, 100)) as (_, base):
                lat["single_process"] = _latencies(base, args.calls)
            print("latency: local protocol ...", file=sys.stderr, flush=True)
            with serving(LocalRayGateway(config(url, 0, 100))) as base:
                lat["local_protocol"] = _latencies(base, args.calls)
            print("latency: ray ...", file=sys.stderr, flush=True)
            gw = deploy(config(url, _PORT[0], 100))
            try:
                lat["ray_serve"] = _latencies(gw.url, args.calls)
            finally:
                undeploy(gw)
            print("latency: bare serve ...", file=sys.stderr, flush=True)
            lat["bare_ray_serve"] = _bare_serve_p50(args.calls)
            p50 = {k: v["p50_ms"] for k, v in lat.items()}
            lat["added_p50_ms"] = p50["ray_serve"] - p50["single_process"]
            lat["added_over_bare_serve_p50_ms"] = p50["ray_serve"] - p50["bare_ray_serve"]
            result["machine"]["load_1m_after"] = os.getloadavg()[0]
            result["latency"] = lat
        finally:
            from ray import serve

            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
