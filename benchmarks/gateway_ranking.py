"""What a ranking decision costs the gateway with 10,000 calls queued.

    python benchmarks/gateway_ranking.py [--queued 10000] [--json OUT.json]

1. Decisions: one upstream of one slot, `--queued` calls waiting at random priorities. A
   decision is a release (the slot goes to the best call: a heap pop) or a submit (a heap
   push); each is timed alone, many times, on the pure `Dispatcher` and through the
   gateway's own `calls.release` / `calls.enqueue` (which also resolve the granted call's future and
   set the queue gauges). After each release a new call is submitted, so the queue stays full.
2. Re-ranking: `Gateway.rerank` with the `gittins` policy over the same number of queued
   calls, one per application, the applications caught mid-run from template runs (the
   policy's PDGraphs learned from 300 runs of each of the six templates). Timed: the first
   round (every application's remaining-demand state sampled), a round with nothing changed
   (what the gateway does every `rank_interval_s` while no call ends or arrives), and rounds
   after k applications gained service (k = 10, 1 %, 10 %, all: their ranks recomputed).
   Side by side, each on a fresh policy and the same queue: the gateway's round
   ("incremental": only the applications whose view changed since the last round), the full
   round it ran before ("batched": one `rank_apps` over every application waiting) and the
   one before that ("per_call": the policy's `priority` call by call).

Best of `--repeat` for rounds; decisions report the median, p99 and max of single calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import learn
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.gateway.apps import CallTicket, GatewayApp, _StageLog
from hermes.gateway.calls import Call
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.dispatch import BE, Dispatcher, Upstream, Waiting
from hermes.gateway.server import Gateway
from hermes.policies.base import AppView, CallInfo, PolicyContext
from hermes.policies.registry import make_policy
from hermes.profiles import load_profile
from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

DECODE_STEP_S = 0.012


def _stats(seconds: list[float]) -> dict[str, float]:
    us = np.asarray(seconds) * 1e6
    return {
        "median_us": round(float(np.median(us)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "max_us": round(float(us.max()), 2),
    }


def dispatcher_decisions(queued: int, ops: int, rng: np.random.Generator) -> dict[str, Any]:
    d = Dispatcher([Upstream("u", frozenset({"m"}), 1)], limit=queued + 2)
    d.submit(-1, "m", 0.0)  # takes the slot
    for i in range(queued):
        d.submit(i, "m", float(rng.random()))
    release: list[float] = []
    submit: list[float] = []
    for i in range(ops):
        t = time.perf_counter()
        grants = d.release("u")
        release.append(time.perf_counter() - t)
        assert len(grants) == 1
        p = float(rng.random())
        t = time.perf_counter()
        d.submit(queued + i, "m", p)
        submit.append(time.perf_counter() - t)
    assert d.queued == queued
    return {"release": _stats(release), "submit": _stats(submit)}


def _gateway(policy: Any, queued: int) -> Gateway:
    backend = Backend(name="u", url="http://127.0.0.1:1", models=["m"], concurrency=1)
    config = GatewayConfig(policy=policy.name, backends=[backend], queue_limit=queued + 2)
    return Gateway(config, policy)


def _call(view: AppView, seq: int) -> Call:
    app = GatewayApp(str(view.app_id), view.app, view)
    stage = _StageLog(view.stage.name if view.stage else "llm", "llm", "llm")
    return Call(CallTicket(app, stage, CallInfo((view.app_id, seq), 0.0, 100)), "m", {}, 0.0)


async def gateway_decisions(queued: int, ops: int, rng: np.random.Generator) -> dict[str, Any]:
    gw = _gateway(make_policy("vllm", PolicyContext()), queued)
    running = _call(AppView("run", "default", 0.0), 0)
    gw.calls.enqueue(running, 0.0)
    for i in range(queued):
        gw.calls.enqueue(_call(AppView(i, "default", 0.0), 0), float(rng.random()))
    release: list[float] = []
    enqueue: list[float] = []
    for i in range(ops):
        head = gw.calls.of(gw.dispatcher._heaps["m"][BE][0][2])  # the call the slot goes to
        t = time.perf_counter()
        gw.calls.release(running, "u")
        release.append(time.perf_counter() - t)
        assert head.future.done()
        running = head
        fresh = _call(AppView(queued + i, "default", 0.0), 0)
        p = float(rng.random())
        t = time.perf_counter()
        gw.calls.enqueue(fresh, p)
        enqueue.append(time.perf_counter() - t)
    assert gw.dispatcher.queued == queued
    return {"release": _stats(release), "enqueue": _stats(enqueue)}


def _views(queued: int, rng: np.random.Generator) -> list[AppView]:
    """Applications caught mid-run, as in `hermes.experiments.ranking_overhead`."""
    pools = {a: generate_runs(a, 50, seed=int(rng.integers(1 << 30))) for a in TEMPLATE_NAMES}
    views = []
    for i in range(queued):
        app = TEMPLATE_NAMES[int(rng.integers(len(TEMPLATE_NAMES)))]
        run = pools[app][int(rng.integers(len(pools[app])))]
        llm = [k for k, s in enumerate(run.stages) if s.kind == "llm"]
        pos = llm[int(rng.integers(len(llm)))]
        stage = run.stages[pos]
        v = AppView(i, app, 0.0, stage_index=pos, stage=stage)
        v.finished = list(run.stages[:pos])
        v.unfinished_calls = int(rng.integers(1, stage.fanout + 1))
        v.attained_s = float(rng.exponential(0.5))
        views.append(v)
    return views


def best(fn: Callable[[], object], repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def _changed_round(
    gw: Gateway, calls: list[Call], round_: Callable[[], None], k: int, rng: np.random.Generator
) -> float:
    """One round after `k` applications gained service (their views changed, as the tracker
    reports a call's end)."""
    for i in rng.choice(len(calls), size=k, replace=False).tolist():
        app = calls[i].ticket.app
        app.view.attained_s += DECODE_STEP_S
        gw.tracker.touch(app)
    t = time.perf_counter()
    round_()
    return time.perf_counter() - t


async def rerank(queued: int, repeat: int, seed: int) -> dict[str, Any]:
    """The gateway's round (`rerank`: over the applications that changed since the last round,
    `rerank_groups`) beside the full round it ran before (one batched `rank_apps` over every
    application waiting, `rerank_all`) and the round before that (the policy's `priority` call
    by call), each on a fresh policy and the same queue."""
    cost = EngineDemandCost(load_profile("llama-2-7b", "a100"))
    runs = [r for i, a in enumerate(TEMPLATE_NAMES) for r in generate_runs(a, 300, 100 + i)]
    models = {a: DemandModel(g, cost) for a, g in learn(runs).items()}
    out: dict[str, Any] = {"queued": queued, "training_runs": len(runs)}
    for name in ("incremental", "batched", "per_call"):
        policy = make_policy("gittins", PolicyContext(models, cost, seed=0))
        gw = _gateway(policy, queued)
        gw.incremental_ranks = name == "incremental"
        views = _views(queued, np.random.default_rng(seed))
        gw.calls.enqueue(_call(AppView("run", "default", 0.0), 0), 0.0)
        calls = [_call(v, i) for i, v in enumerate(views)]
        for i, c in enumerate(calls):
            gw.calls.enqueue(c, float(i))

        def per_call(gw: Gateway = gw, policy: Any = policy) -> None:
            def rank(w: Waiting) -> float:
                t = gw.calls.of(w).ticket
                return float(policy.priority(t.info, t.app.view, 0.0))

            gw.dispatcher.rerank(rank)

        round_ = per_call if name == "per_call" else gw.rerank
        t = time.perf_counter()
        round_()  # builds every application's remaining-demand state
        first = time.perf_counter() - t
        unchanged = best(round_, repeat)
        rng = np.random.default_rng(seed + 1)
        changed = {
            f"{k}_changed_ms": round(
                min(_changed_round(gw, calls, round_, k, rng) for _ in range(repeat)) * 1e3, 3
            )
            for k in (10, queued // 100, queued // 10, queued)
        }
        out[name] = {
            "first_round_ms": round(first * 1e3, 2),
            "unchanged_ms": round(unchanged * 1e3, 3),
            **changed,
        }
    return out


async def run(queued: int, ops: int, repeat: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "queued": queued,
        "decisions": {
            "dispatcher": dispatcher_decisions(queued, ops, rng),
            "gateway": await gateway_decisions(queued, ops, rng),
        },
        "rerank_gittins": await rerank(queued, repeat, seed),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queued", type=int, default=10_000)
    p.add_argument("--ops", type=int, default=5_000, help="decisions timed")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmarks/results/gateway_ranking.json")
    args = p.parse_args()
    out = asyncio.run(run(args.queued, args.ops, args.repeat, args.seed))
    print(f"{args.queued:,} calls queued")
    for where, ops in out["decisions"].items():
        for op, s in ops.items():
            print(
                f"  {where:10} {op:8} median {s['median_us']:7.2f} µs  p99 {s['p99_us']:7.2f} µs"
                f"  max {s['max_us']:8.2f} µs"
            )
    for k, v in out["rerank_gittins"].items():
        print(f"  rerank gittins {k}: {v}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
