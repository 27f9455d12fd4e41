"""What many client-chosen application types cost a /metrics scrape, with the types bounded
(`max_app_types`, default 64: later types count as `other`) and unbounded (the limit raised
above the number of types, as the gateway behaved before the bound).

    python benchmarks/gateway_scrape.py [--types 3000] [--repeat 5] [--json OUT.json]

In process, no network: `--types` applications, each of a type of its own, run one call and
finish through the gateway's tracker and finisher, and are learned by the composition root's
`learn` (so the demand graphs grow as they would). Then, the median of `--repeat`:

- `render_s`: one `metrics.render()` (what a scrape held the event loop for when it ran on it);
- `loop_lag_s`: the longest a 1 ms ticker on the event loop was late while a scrape rendered
  in a thread, as `/metrics` now does (the GIL is shared, so not zero);
- `series` (lines of the scrape that are samples) and `graphs` (demand graphs learned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from hermes.gateway.build import build_gateway
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.context import CallContext
from hermes.gateway.server import Gateway


def _loaded(types: int, max_app_types: int) -> Gateway:
    backend = Backend(name="b", url="http://127.0.0.1:9", models=["m"])
    gw = build_gateway(GatewayConfig(backends=[backend], max_app_types=max_app_types))
    for i in range(types):
        app, _ = gw.tracker.app_for(CallContext(f"a{i}", f"type-{i}", "llm", None, None), 0.0)
        ticket = gw.tracker.start_call(app, "llm", 100, 0.0)
        gw.tracker.end_call(ticket, 100, 20, 1.0)
        gw.finisher.finish(app, 1.0)
    return gw


async def _lag_during_threaded_render(gw: Gateway) -> float:
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    await asyncio.to_thread(gw.metrics.render)
    done = True
    await tick
    return worst


def measure(types: int, max_app_types: int, repeat: int) -> dict[str, Any]:
    gw = _loaded(types, max_app_types)
    render = []
    for _ in range(repeat):
        t = time.perf_counter()
        text = gw.metrics.render()
        render.append(time.perf_counter() - t)
    lag = [asyncio.run(_lag_during_threaded_render(gw)) for _ in range(repeat)]
    series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
    return {
        "max_app_types": max_app_types,
        "render_s": statistics.median(render),
        "loop_lag_s": statistics.median(lag),
        "series": series,
        "graphs": len(gw.graphs),
        "bytes": len(text),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = [measure(args.types, limit, args.repeat) for limit in (64, args.types + 1)]
    result = {
        "types": args.types,
        "repeat": args.repeat,
        "bounded": rows[0],
        "unbounded": rows[1],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    for name in ("bounded", "unbounded"):
        r = result[name]
        print(
            f"{name:9} (max_app_types {r['max_app_types']}): {r['series']} series, "
            f"{r['graphs']} graphs, render {1e3 * r['render_s']:.1f} ms, event-loop lag "
            f"during a threaded scrape {1e3 * r['loop_lag_s']:.1f} ms"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
