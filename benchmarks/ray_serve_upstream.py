"""Serve-deployment upstreams (`url: serve://APP/DEPLOYMENT`) against URL upstreams, through
the gateway on Ray Serve (`hermes serve --ray`, 2 ingress replicas, a local Ray with 2 CPUs):
what a call costs when the ingress reaches the engine by a `DeploymentHandle` instead of HTTP,
and how the engine replicas' load is shared with `HermesRequestRouter`.

    python benchmarks/ray_serve_upstream.py [--json OUT] [--calls 200] [--apps 16]

Latency: one client sends `calls` calls one after another (kept-alive connection), each
alternating between two backends serving the same emulated engine with a negligible engine
time (time_scale 0.001, 1 token): (a) by URL (the emulator's HTTP server, one process) and
(b) as the emulator deployment (2 replicas, placed by `HermesRequestRouter`), plain and
streamed. Reported: p50 and p90 per path, the difference of the p50s.

Placement: `apps` applications of 4 calls each, sent by 8 clients at once to (b): the calls
each engine replica made (from `system_fingerprint`), and how many applications had all their
calls on one replica.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from hermes.emulator.server import emulated_app
from hermes.gateway.config import Backend, GatewayConfig, RayOptions
from hermes.testing.asgi_thread import serving

OUT = Path(__file__).resolve().parent / "results" / "ray" / "serve_upstream.json"
TIME_SCALE = 0.001  # the engine's own time, negligible: what is left is the path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(url: str) -> GatewayConfig:
    by_url = Backend(name="http", kind="emulated", url=url, models=["by-url"], concurrency=8)
    by_handle = Backend(
        name="serve",
        kind="emulated",
        url="serve://llm/Engine",
        models=["by-handle"],
        concurrency=8,
        time_scale=TIME_SCALE,
    )
    opts = RayOptions(ingress_replicas=2, num_cpus=2)
    return GatewayConfig(
        policy="gittins", backends=[by_url, by_handle], ray=opts, port=_free_port()
    )


def _ms(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=10)
    return {"p50_ms": round(statistics.median(samples) * 1e3, 2), "p90_ms": round(qs[8] * 1e3, 2)}


def latency(base: str, calls: int) -> dict[str, Any]:
    """Alternating calls to the two backends, plain and streamed; per path p50 and p90."""
    times: dict[str, list[float]] = defaultdict(list)
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in range(calls + 20):  # the first 20 rounds warm up
            for model in ("by-url", "by-handle"):
                for stream in (False, True):
                    body = {"model": model, "prompt": "hi", "max_tokens": 1, "stream": stream}
                    t0 = time.perf_counter()
                    r = client.post("/v1/completions", json=body)
                    elapsed = time.perf_counter() - t0
                    if r.status_code != 200:
                        raise RuntimeError(f"{model}: {r.status_code} {r.text[:200]}")
                    if i >= 20:
                        times[f"{model}{' stream' if stream else ''}"].append(elapsed)
    out: dict[str, Any] = {k: _ms(v) for k, v in times.items()}
    for suffix in ("", " stream"):
        out[f"handle minus url{suffix} p50_ms"] = round(
            out[f"by-handle{suffix}"]["p50_ms"] - out[f"by-url{suffix}"]["p50_ms"], 2
        )
    return out


def placement(base: str, apps: int) -> dict[str, Any]:
    """`apps` applications x 4 calls by 8 clients at once: calls per engine replica, and
    applications whose calls all landed on one replica."""
    where: dict[str, list[str]] = defaultdict(list)

    def run(app: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            for turn in range(4):
                heads = {"x-hermes-app-id": f"app-{app}", "x-hermes-app-type": "t"}
                heads["x-hermes-stage"] = f"s{turn}"
                body = {"model": "by-handle", "prompt": f"turn {turn}", "max_tokens": 8}
                r = client.post("/v1/completions", json=body, headers=heads)
                where[f"app-{app}"].append(r.json()["system_fingerprint"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, range(apps)))
    per_replica = Counter(r for calls in where.values() for r in calls)
    return {
        "applications": apps,
        "calls_per_replica": sorted(per_replica.values()),
        "applications_on_one_replica": sum(len(set(c)) == 1 for c in where.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--apps", type=int, default=16)
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray
        from ray import serve

        from hermes.ray_serve.deployment import deploy, undeploy

    load = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="hermes")
    try:
        app = emulated_app(["by-url"], time_scale=TIME_SCALE)
        with serving(app) as url:
            gw = deploy(_config(url))
            try:
                result = {
                    "latency": latency(gw.url, args.calls),
                    "placement": placement(gw.url, args.apps),
                }
            finally:
                undeploy(gw)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "calls": args.calls,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
