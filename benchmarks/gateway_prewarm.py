"""How much of the tools' cold start the gateway's prewarm actuators hide, per prewarm policy.

    python benchmarks/gateway_prewarm.py [--apps 30] [--rate 0.5] [--json OUT.json]

Template applications with tool stages (factool_code: docker; react_alfw: env) are replayed in
real time through `hermes serve`'s emulated Llama-2-7B engine, with `docker` (2 s cold start)
and `env` (1 s) configured as `http` prewarm targets whose hook is a stand-in tool manager that
records each call. The PDGraphs come from template runs apart from the replayed ones. For each
prewarm policy the gateway scores every tool stage as it starts (`hermes_prewarm_tool_starts`):
`warm` when an order fired at least one cold start before and its hold had not run out,
`warming` when one fired too late to be ready, `cold` when none did. Reported per policy: those
counts, the share of tool stages that found a warm instance, the hook calls per tool stage
(what prewarming costs the tool side), and the replay's completion times (the replay sleeps a
tool stage's recorded time, so these show only that prewarming costs the LLM path nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hermes.gateway.config import gateway_config_from_dict
from hermes.replay import ReplaySettings, replay
from hermes.sim.build import template_graphs, template_runs
from hermes.testing.asgi_thread import serving
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.workloads.pdgraph_files import save_pdgraphs

MIX = {"factool_code": 1.0, "react_alfw": 1.0}
COLD_STARTS = {"docker": 2.0, "env": 1.0}  # as the Hermes experiments configure them
POLICIES = ("none", "on-queue", "pdgraph")


class _ToolManager:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/warm", self.warm, methods=["POST"])])

    async def warm(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.calls.append(body)
        return JSONResponse({"ok": True})


def _counter(text: str, name: str) -> dict[tuple[str, ...], float]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if m:
            labels = tuple(sorted(v for v in re.findall(r'="([^"]*)"', m.group(1))))
            out[labels] = float(m.group(2))
    return out


def run_policy(
    prewarm: str, graphs: str, runs: list[Any], rate: float, seed: int
) -> dict[str, Any]:
    manager = _ToolManager()
    with serving(manager.app) as hooks:
        cfg = gateway_config_from_dict(
            {
                "port": 0,
                "policy_options": {"pdgraphs": graphs, "prewarm": prewarm},
                "backends": [{"name": "e", "kind": "emulated", "models": ["llama-2-7b"]}],
                "prewarm_targets": [
                    {
                        "name": b,
                        "action": "http",
                        "cold_start_s": c,
                        "hook": {"url": hooks + "/warm"},
                    }
                    for b, c in COLD_STARTS.items()
                ],
            }
        )
        with gateway_in_thread(cfg) as (_, base):
            summary = asyncio.run(replay(runs, ReplaySettings(base, rate, seed=seed)))
            text = httpx.get(base + "/metrics").text
    starts = _counter(text, "hermes_prewarm_tool_starts_total")
    by_state = dict.fromkeys(("warm", "warming", "cold"), 0.0)
    for labels, v in starts.items():
        state = next(x for x in labels if x in by_state)
        by_state[state] += v
    total = sum(by_state.values())
    orders = _counter(text, "hermes_prewarm_orders_total")
    return {
        "tool_stages": int(total),
        "found": {k: int(v) for k, v in by_state.items()},
        "warm_fraction": by_state["warm"] / total if total else None,
        "ready_or_warming_fraction": (by_state["warm"] + by_state["warming"]) / total
        if total
        else None,
        "orders": {
            reason: int(sum(v for k, v in orders.items() if reason in k))
            for reason in ("prewarm", "retain")
        },
        "hook_calls_per_tool_stage": len(manager.calls) / total if total else None,
        "act_mean_s": summary.get("act_mean"),
        "act_p95_s": summary.get("act_p95"),
        "errors": summary.get("errors"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--apps", type=int, default=30)
    ap.add_argument("--rate", type=float, default=0.5, help="applications per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    runs = template_runs(MIX, args.apps, rng, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = str(Path(tmp) / "pdgraphs.json")
        save_pdgraphs(graphs, template_graphs(list(MIX), 200, args.seed + 1))
        results = {p: run_policy(p, graphs, runs, args.rate, args.seed) for p in POLICIES}
    out = {
        "benchmark": "gateway_prewarm",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "config": {
            "apps": args.apps,
            "rate_per_s": args.rate,
            "seed": args.seed,
            "mix": MIX,
            "cold_starts_s": COLD_STARTS,
        },
        "policies": results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
