"""The gateway on Ray (`hermes serve --ray`): how many calls the scheduler actor orders per
second with 10,000 queued, and what the Ray path adds to a call's latency against the
single-process gateway.

    python benchmarks/ray_scheduler.py [--json OUT] [--queued 10000] [--rounds 40] [--calls 300]
        [--skip-rates] [--skip-latency] [--skip-direct]

Decisions: a scheduler actor on a local Ray (2 CPUs) with `queued` calls waiting behind the
full slots of 8 upstreams (64 each: 512 running); each batch from the benchmark's "replica"
carries B releases of running calls (each slot freed goes to the best-ranked waiting call: a
grant) and B new calls (each placed in policy order), so the queue stays at its size. Calls
ordered per second = grants per second of wall time, and per CPU second of the actor's
process, by batch size B and batches in flight (B = 1: one actor round trip per call, what
an unbatched design would get; "100x4": four senders of batches of 100, each sending its
next when its last is answered, as a replica's link keeps up to 4 in flight). The same core
in-process (no Ray).

Latency: one client sends `calls` chat calls one after another (kept-alive connection) to an
upstream that answers at once, through (a) the single-process gateway, (b) the Ray gateway's
parts in one process (`ray_serve.local`: the scheduler protocol without Ray), (c) the gateway
on Ray Serve with 2 ingress replicas, and (d) a bare Ray Serve deployment answering the same
bytes itself (Serve's own proxy hop, no Hermes); then, on a second local Ray started with
Serve's direct ingress (`ray: {direct_ingress: true}`), (e) the gateway through one ingress
replica's own port, (f) the same with the replicas reaching the actor on its socket
(`scheduler_link: tcp`), and (g) the bare deployment through its replica's own port.
Reported: p50 and p90 per path; (c), (e) and (f) are measured call by call in turn with (a)
(both up at once), and their added p50 is over that (a). The actor's
rates are also measured over its socket ("actor_tcp"). `--skip-direct` leaves out what older
code lacks (direct ingress, the socket), to measure it with the same harness.
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
# Calls running while `queued` wait: 8 upstreams (engines) of 64 slots, 512 (>= 4 x 100).
UPSTREAMS, SLOTS = 8, 64
# (batch size, batches in flight at once): B = 1 is one actor round trip per call; a replica
# keeps up to 4 batches in flight (`ray_serve.link.IN_FLIGHT`).
SHAPES = ((1, 1), (10, 1), (100, 1), (100, 4))
# gittins: dynamic, a ranking round over every waiting call each rank_interval_s (0.1 s);
# vllm: first come, first served, no rounds: the actor's grant path alone.
POLICIES = ("gittins", "vllm")


def config(
    url: str,
    port: int,
    queued: int,
    policy: str = "gittins",
    direct: bool = False,
    tcp: bool = False,
) -> GatewayConfig:
    backends = [
        Backend(name=f"u{i}", kind="vllm", url=url, models=["m"], concurrency=SLOTS)
        for i in range(UPSTREAMS)
    ]
    return GatewayConfig(
        port=port,
        policy=policy,
        backends=backends,
        queue_limit=queued + 10_000,
        queue_timeout_s=3600,
        # (the new options only when asked: the benchmark also runs older code without them)
        ray=RayOptions(
            num_cpus=2,
            ingress_replicas=2,
            **({"direct_ingress": True} if direct else {}),
            **({"scheduler_link": "tcp"} if tcp else {}),
        ),
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
        total = UPSTREAMS * SLOTS + self.queued
        while self.next_id < total:
            reply = await self.step("bench", self._submits(min(1000, total - self.next_id)))
            self.running += [g.call_id for g in reply.granted]

    async def rate(self, batch: int, rounds: int, inflight: int = 1) -> tuple[int, float]:
        """Grants, and per second of wall time, over `rounds` batches of `batch` from each
        of `inflight` senders at once (each sends its next batch when its last is answered)."""
        grants = 0

        async def sender() -> None:
            nonlocal grants
            for _ in range(rounds):
                done, self.running = self.running[:batch], self.running[batch:]
                ops: list[Op] = [
                    Release(c, "stop", {"prompt_tokens": 50, "completion_tokens": 20}) for c in done
                ]
                reply = await self.step("bench", ops + self._submits(batch))
                self.running += [g.call_id for g in reply.granted]
                grants += len(reply.granted)

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(inflight)))
        return grants, grants / (time.perf_counter() - start)


def _rounds(batch: int, rounds: int) -> int:
    return max(rounds, 500 // batch)


def _shape(batch: int, inflight: int) -> str:
    return str(batch) if inflight == 1 else f"{batch}x{inflight}"


async def _core_rates(url: str, queued: int, rounds: int, policy: str) -> dict[str, Any]:
    """Grants per second of the core in this process, started (its ranking rounds, aging and
    health loops run, as in the actor), by batch size."""
    core = SchedulerCore.from_config(config(url, 0, queued, policy))
    await core.start()

    async def step(replica: str, ops: list[Op]) -> Any:
        return await core.step(replica, ops)

    d = _Driver(step, queued)
    await d.fill()
    out: dict[str, Any] = {}
    for b, k in SHAPES:
        cpu = time.process_time()
        grants, wall = await d.rate(b, _rounds(b, rounds), k)
        out[_shape(b, k)] = {"per_wall_s": wall, "per_cpu_s": grants / (time.process_time() - cpu)}
    await core.stop()
    return out


async def _actor_rates(handle: Any, queued: int, rounds: int, tcp: bool) -> dict[str, Any]:
    """As `_core_rates`, through the actor (`tcp`: over its socket, as `scheduler_link: tcp`
    replicas reach it); CPU seconds are the actor process's own."""
    from hermes.ray_serve.actor import ActorRemote

    remote: Any = ActorRemote(handle)
    if tcp:
        from hermes.ray_serve.socket_link import SocketRemote

        remote = SocketRemote(remote.address, remote.http)
    d = _Driver(remote.step, queued)
    await d.fill()
    stats = await handle.stats.remote()
    assert stats["queued"] == queued, stats
    out: dict[str, Any] = {}
    for b, k in SHAPES:
        cpu = (await handle.stats.remote())["cpu_s"]
        grants, wall = await d.rate(b, _rounds(b, rounds), k)
        used = (await handle.stats.remote())["cpu_s"] - cpu
        out[_shape(b, k)] = {"per_wall_s": wall, "per_actor_cpu_s": grants / used}
    return out


def _latencies(base: str, calls: int) -> dict[str, float]:
    return _paired({"x": base}, calls)["x"]


def _paired(bases: dict[str, str], calls: int) -> dict[str, dict[str, float]]:
    """p50 and p90 of `calls` calls to each base, taken in turn (a call to each, then the
    next round), so that the machine's load moves all of them alike."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    times: dict[str, list[float]] = {name: [] for name in bases}
    clients = {name: httpx.Client(base_url=b, timeout=60) for name, b in bases.items()}
    try:
        for i in range(calls + 20):
            for name, c in clients.items():
                t = time.perf_counter()
                r = c.post("/v1/chat/completions", json=body)
                dt = time.perf_counter() - t
                assert r.status_code == 200, r.text
                if i >= 20:  # warm-up: connections, first calls' imports
                    times[name].append(dt * 1e3)
    finally:
        for c in clients.values():
            c.close()
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        out[name] = {"p50_ms": statistics.median(ts), "p90_ms": q[8], "calls": calls}
    return out


def _bare_serve_p50(calls: int, direct: bool = False) -> dict[str, float]:
    """Ray Serve's proxy (or with `direct`, a replica's own port) and a replica answering
    the upstream's bytes itself."""
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
        if direct:  # (imported here: older code, measured without it, has none)
            from hermes.ray_serve.deployment import replica_urls

            return _latencies(replica_urls("bare", 2, "127.0.0.1")[0], calls)
        return _latencies(_serve_url(), calls)
    finally:
        serve.delete("bare")


_PORT: list[int] = []


def _serve_url() -> str:
    return f"http://127.0.0.1:{_PORT[0]}"


def _measure_rates(url: str, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Calls ordered per second, by policy: the core in-process, then the actor."""
    import ray

    from hermes.ray_serve.actor import start_scheduler

    for policy in POLICIES:
        print(f"{policy}: in-process core ...", file=sys.stderr, flush=True)
        rates = {"core": asyncio.run(_core_rates(url, args.queued, args.rounds, policy))}
        for tcp in (False,) if args.skip_direct else (False, True):
            print(f"{policy}: actor{' over tcp' if tcp else ''} ...", file=sys.stderr, flush=True)
            handle = start_scheduler(config(url, _PORT[0], args.queued, policy), policy)
            actor = asyncio.run(_actor_rates(handle, args.queued, args.rounds, tcp))
            ray.kill(handle, no_restart=True)
            rates["actor_tcp" if tcp else "actor"] = actor
        result["calls_per_s"][policy] = rates
        print(rates, file=sys.stderr, flush=True)


def _measure_latency(url: str, calls: int) -> dict[str, Any]:
    """(a)-(d): single process, the local protocol, Ray Serve's proxy, a bare deployment."""
    from hermes.ray_serve.deployment import deploy, undeploy

    lat: dict[str, Any] = {}
    print("latency: single process ...", file=sys.stderr, flush=True)
    with gateway_in_thread(config(url, 0, 100)) as (_, base):
        lat["single_process"] = _latencies(base, calls)
    print("latency: local protocol ...", file=sys.stderr, flush=True)
    with serving(LocalRayGateway(config(url, 0, 100))) as base:
        lat["local_protocol"] = _latencies(base, calls)
    print("latency: ray ...", file=sys.stderr, flush=True)
    gw = deploy(config(url, _PORT[0], 100))
    try:
        with gateway_in_thread(config(url, 0, 100)) as (_, base):
            both = _paired({"single_process": base, "ray_serve": gw.url}, calls)
        lat["ray_serve"] = both["ray_serve"]
        lat["ray_serve"]["single_process_p50_ms"] = both["single_process"]["p50_ms"]
    finally:
        undeploy(gw)
    print("latency: bare serve ...", file=sys.stderr, flush=True)
    lat["bare_ray_serve"] = _bare_serve_p50(calls)
    return lat


def _measure_direct(url: str, calls: int) -> dict[str, Any]:
    """(e), (f): on a local Ray started here with direct ingress (`deploy` starts it)."""
    from hermes.ray_serve.deployment import deploy, undeploy

    lat: dict[str, Any] = {}
    for tcp in (False, True):
        name = "ray_direct_tcp" if tcp else "ray_direct_ingress"
        print(f"latency: {name} ...", file=sys.stderr, flush=True)
        gw = deploy(config(url, _PORT[0], 100, direct=True, tcp=tcp))
        try:
            with gateway_in_thread(config(url, 0, 100)) as (_, base):
                both = _paired({"single_process": base, name: gw.replica_urls[0]}, calls)
            lat[name] = both[name]
            lat[name]["single_process_p50_ms"] = both["single_process"]["p50_ms"]
        finally:
            undeploy(gw)
    print("latency: bare serve, direct ingress ...", file=sys.stderr, flush=True)
    lat["bare_ray_serve_direct"] = _bare_serve_p50(calls, direct=True)
    return lat


def _shutdown() -> None:
    import ray
    from ray import serve

    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--skip-rates", action="store_true", help="latency only")
    ap.add_argument("--skip-latency", action="store_true", help="calls ordered per second only")
    ap.add_argument(
        "--skip-direct", action="store_true", help="no direct ingress, no socket link (old code)"
    )
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray

    result: dict[str, Any] = {
        "queued": args.queued,
        "slots": UPSTREAMS * SLOTS,
        "upstreams": UPSTREAMS,
        "calls_per_s": {},
        "machine": {
            "cpus": os.cpu_count(),
            "load_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "ray": ray.__version__,
            "hermes": str(Path(sys.modules["hermes"].__file__ or "").parent),
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
            if not args.skip_rates:
                _measure_rates(url, args, result)
            lat = {} if args.skip_latency else _measure_latency(url, args.calls)
        finally:
            _shutdown()
        if not args.skip_latency:
            if not args.skip_direct:
                try:
                    lat |= _measure_direct(url, args.calls)
                finally:
                    _shutdown()
            p50 = {k: v["p50_ms"] for k, v in lat.items()}
            lat["added_over_bare_serve_p50_ms"] = p50["ray_serve"] - p50["bare_ray_serve"]
            # Each Ray path against the single-process gateway measured in turn with it.
            for name in ("ray_serve", "ray_direct_ingress", "ray_direct_tcp"):
                if name in p50:
                    base = lat[name]["single_process_p50_ms"]
                    lat[f"added_{name}_p50_ms"] = p50[name] - base
            result["latency"] = lat
        result["machine"]["load_1m_after"] = os.getloadavg()[0]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
