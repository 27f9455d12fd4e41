"""What one `GET /v1/hermes/state` costs the event loop (the dashboard polls it every second),
with many calls queued and many applications in progress.

    python benchmarks/gateway_state_api.py [--apps 10000] [--types 6] [--repeat 7] \
        [--json benchmarks/results/gateway_state_api.json]

In process, no network: a gateway built as `hermes serve` builds it (its graphs learned from
50 synthetic runs of each of `--types` application templates), one upstream with one slot, and
`--apps` applications of those types each with one call queued. Then, the median and worst of
`--repeat` snapshots (`StateApi.snapshot`, top 50, the handler's whole work but the JSON
encoding, measured apart): `first_s` is the first snapshot (it samples the predicted remaining
demand of the 50 applications listed: cached per application state after), `snapshot_s` the
following ones, `json_s` the encoding of one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from hermes.core.pdgraph import learn
from hermes.gateway.build import build_gateway
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.context import CallContext
from hermes.gateway.server import Gateway
from hermes.workloads.templates import generate_runs

APPS = (
    "factool_code",
    "factool_kbqa",
    "factool_math",
    "react_fever",
    "react_alfw",
    "langchain_mapreduce",
)


def _loaded(apps: int, types: int) -> Gateway:
    backend = Backend(name="b", url="http://127.0.0.1:9", models=["m"], concurrency=1)
    gw = build_gateway(GatewayConfig(backends=[backend]))
    kinds = APPS[:types]
    for k in kinds:
        gw.graphs.update(learn(generate_runs(k, 50, seed=1)))
    for i in range(apps):
        kind = kinds[i % len(kinds)]
        first = gw.graphs[kind].successors()["<start>"]
        stage = max(first, key=first.__getitem__)
        app, _ = gw.tracker.app_for(CallContext(f"a{i}", kind, stage, None, None), 0.0)
        ticket = gw.tracker.start_call(app, stage, 100, 0.0)
        gw.dispatcher.submit(ticket, "m", float(i % 997), now=0.0)
    return gw


def measure(apps: int, types: int, repeat: int) -> dict[str, Any]:
    gw = _loaded(apps, types)
    t = time.perf_counter()
    state = gw.state_api.snapshot(1.0)
    first = time.perf_counter() - t
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        state = gw.state_api.snapshot(2.0 + i)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    body = json.dumps(state)
    json_s = time.perf_counter() - t
    return {
        "apps": apps,
        "queued": gw.dispatcher.queued,
        "types": types,
        "first_s": first,
        "snapshot_s": {"median": statistics.median(times), "max": max(times)},
        "json_s": json_s,
        "bytes": len(body),
        "listed_apps": len(state["apps"]["apps"]),
        "predicted": sum(a["predicted_remaining_s"] is not None for a in state["apps"]["apps"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--apps", type=int, default=10_000)
    ap.add_argument("--types", type=int, default=6, choices=range(1, len(APPS) + 1))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "runs": [measure(n, args.types, args.repeat) for n in (100, args.apps)],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
