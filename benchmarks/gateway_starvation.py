"""Untagged calls against tagged applications under `gittins`, with and without aging.

    python benchmarks/gateway_starvation.py [--seconds 60] [--aging none,30,5] [--json OUT.json]

The starving mix of issue 16 (defect 11): untagged calls (no x-hermes-* headers: each its own
one-call application, rank 0 under `gittins`, which ranks a type without a PDGraph by least
attained service) arrive as a Poisson stream that keeps an emulated Llama-2-7B A100 replica
near saturation, while tagged applications of `--calls` sequential calls arrive beside them.
A tagged application's later calls carry the service its earlier calls attained, so every
untagged call ranks ahead of them: without aging they wait for a lull in the untagged stream,
which near saturation can take the whole run. Aging (`aging_max_wait_s`) bounds that wait.

Each setting runs on the same seeded arrivals; reported per setting: latency percentiles of
tagged and untagged calls (send to last byte, wall seconds), the tagged applications'
completion times, calls that failed, and `hermes_aged_calls`. Wall-clock figures: they vary
with the host's load; run it on an otherwise idle machine and compare settings side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from hermes.gateway.config import gateway_config_from_dict
from hermes.testing.gateway_thread import gateway_in_thread

MODEL = "llama-2-7b"
PROMPT = "x" * 800  # 200 prompt tokens for the emulator
MAX_TOKENS = 64


def _config(aging: float | None, args: argparse.Namespace) -> dict[str, Any]:
    backend = {
        "name": "emulated-0",
        "kind": "emulated",
        "models": [MODEL],
        "concurrency": args.concurrency,
        "time_scale": args.time_scale,
    }
    return {"port": 0, "policy": "gittins", "backends": [backend], "aging_max_wait_s": aging}


FAILURES: list[str] = []  # what each failed call got


async def _call(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[float, bool]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    began = time.monotonic()
    try:
        r = await client.post(
            "/v1/chat/completions", json=body | {"max_tokens": MAX_TOKENS}, headers=headers
        )
        ok = r.status_code == 200
        if not ok:
            FAILURES.append(f"{r.status_code}: {r.text[:200]}")
    except httpx.HTTPError as e:
        FAILURES.append(repr(e))
        ok = False
    return time.monotonic() - began, ok


async def _app(
    client: httpx.AsyncClient, i: int, calls: int
) -> tuple[list[tuple[float, bool]], float]:
    began = time.monotonic()
    out = []
    for k in range(calls):
        headers = {"x-hermes-app-id": f"agent-{i}", "x-hermes-app-type": "agent"}
        out.append(await _call(client, headers | {"x-hermes-stage": f"step{k}"}))
    return out, time.monotonic() - began


async def _load(base: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    untagged: list[asyncio.Task[tuple[float, bool]]] = []
    tagged: list[asyncio.Task[tuple[list[tuple[float, bool]], float]]] = []
    async with httpx.AsyncClient(base_url=base, timeout=args.seconds * 10, limits=limits) as c:
        # Both streams drawn up front from one seed: every setting sees the same arrivals.
        events = [(t, "u") for t in np.cumsum(rng.exponential(1 / args.untagged_rate, 100_000))]
        events += [(t, "t") for t in np.cumsum(rng.exponential(1 / args.app_rate, 10_000))]
        events = sorted(e for e in events if e[0] < args.seconds)
        start = time.monotonic()
        for t, kind in events:
            await asyncio.sleep(max(0.0, start + t - time.monotonic()))
            if kind == "u":
                untagged.append(asyncio.create_task(_call(c, {})))
            else:
                tagged.append(asyncio.create_task(_app(c, len(tagged), args.calls)))
        u = await asyncio.gather(*untagged)
        t_ = await asyncio.gather(*tagged)
    tagged_calls = [x for calls, _ in t_ for x in calls]
    return {
        "untagged": _summary([s for s, ok in u if ok], len(u) - sum(ok for _, ok in u)),
        "tagged_calls": _summary(
            [s for s, ok in tagged_calls if ok], sum(not ok for _, ok in tagged_calls)
        ),
        "tagged_apps": _summary([s for _, s in t_], 0),
    }


def _summary(xs: list[float], failed: int) -> dict[str, Any]:
    a = np.asarray(xs) if xs else np.zeros(1)
    return {
        "n": len(xs),
        "failed": failed,
        "mean_s": round(float(a.mean()), 3),
        "p50_s": round(float(np.percentile(a, 50)), 3),
        "p99_s": round(float(np.percentile(a, 99)), 3),
        "max_s": round(float(a.max()), 3),
    }


def _aged(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    m = re.search(r"^hermes_aged_calls_total (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def run(aging: float | None, args: argparse.Namespace) -> dict[str, Any]:
    cfg = gateway_config_from_dict(_config(aging, args))
    with gateway_in_thread(cfg) as (_, base):
        FAILURES.clear()
        result = asyncio.run(_load(base, args))
        result["aged_calls"] = _aged(base)
        result["failures"] = sorted(set(FAILURES))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="arrivals for this long")
    ap.add_argument("--aging", default="none,30,5", help="aging_max_wait_s values; none: off")
    ap.add_argument("--untagged-rate", type=float, default=12.5, help="untagged calls per s")
    ap.add_argument("--app-rate", type=float, default=0.5, help="tagged applications per s")
    ap.add_argument("--calls", type=int, default=4, help="calls per tagged application")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--time-scale", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings = [None if a.strip() == "none" else float(a) for a in args.aging.split(",")]
    results = {str(a).lower(): run(a, args) for a in settings}
    out = {
        "benchmark": "gateway_starvation",
        "command": "python benchmarks/gateway_starvation.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "by_aging_max_wait_s": results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
