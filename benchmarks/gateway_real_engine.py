"""Gittins against vLLM order in the live gateway, in front of a real llama.cpp server.

The comparison of tests/test_gateway_real_engine.py with more applications, several arrival
rates and several seeds: llama-cpp-python's server runs the tiny random-weight model
(`hermes.testing.tiny_gguf`, one CPU thread, one request at a time); the gateway has one
backend of concurrency 1, so calls queue in it in the policy's order; `hermes replay` drives
the shrunk mixed workload (`hermes.testing.real_engine_workload`: factool_math, factool_code,
langchain_mapreduce) through it, the same applications at the same times under each policy.
PDGraphs come from other runs of the same templates.

Each policy runs twice per rate and seed, in the order vllm, gittins, gittins, vllm; a row
reports the means of the two.

Usage: python benchmarks/gateway_real_engine.py [--json OUT] [--apps 100] [--rates 4,6,8,12]
       [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hermes.gateway.config import Backend, GatewayConfig
from hermes.replay import ReplaySettings, replay
from hermes.sim.config import PolicyOptions
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.testing.llama_server import DEFAULT_MODEL_ALIAS, llama_server
from hermes.testing.real_engine_workload import MIX, mixed_runs, write_graphs
from hermes.testing.tiny_gguf import write_tiny_llama

POLICIES = ("vllm", "gittins")
KEYS = ("apps", "failed", "act_mean", "act_p50", "act_p95", "act_p99", "errors", "wall_s")


def run_policy(
    policy: str, url: str, graphs: Path, settings: dict[str, Any], pool: list[Any]
) -> dict[str, Any]:
    backend = Backend(
        name="llama",
        kind="llamacpp",
        url=url,
        models=[DEFAULT_MODEL_ALIAS],
        concurrency=1,
        health_path="/v1/models",
    )
    config = GatewayConfig(
        port=0,
        policy=policy,
        policy_options=PolicyOptions(pdgraphs=str(graphs)),
        backends=[backend],
    )
    cpu = time.process_time()
    with gateway_in_thread(config) as (_, base):
        result = asyncio.run(replay(pool, ReplaySettings(base, **settings)))
    out = {k: result[k] for k in KEYS}
    # The gateway's and the client's CPU time (this process), not the engine's.
    out["cpu_s"] = time.process_time() - cpu
    out["by_type"] = {t: s["act_mean"] for t, s in result["by_type"].items()}
    return out


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--rates", default="4,6,8,12", help="applications per second")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--training-runs", type=int, default=100, help="per application type")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_llama(Path(tmp) / "tiny-llama.gguf")
        graphs = write_graphs(Path(tmp) / "pdgraphs.json", args.training_runs, 1000)
        pool = mixed_runs(max(30, args.apps), seed=0)
        with llama_server(model, n_ctx=512, n_threads=1) as url:
            for rate in rates:
                for seed in seeds:
                    settings = {"rate_per_s": rate, "apps": args.apps, "seed": seed}
                    row: dict[str, Any] = {"rate_per_s": rate, "seed": seed}
                    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICIES}
                    # A B B A: a machine whose load drifts weighs on both policies alike.
                    for policy in (*POLICIES, *reversed(POLICIES)):
                        runs[policy].append(run_policy(policy, url, graphs, settings, pool))
                    for policy, rs in runs.items():
                        row[policy] = {
                            "act_mean": _mean(rs, "act_mean"),
                            "act_p95": _mean(rs, "act_p95"),
                            "runs": rs,
                        }
                    v, g = row["vllm"], row["gittins"]
                    row["ratio_mean"] = g["act_mean"] / v["act_mean"]
                    row["ratio_p95"] = g["act_p95"] / v["act_p95"]
                    rows.append(row)
                    print(
                        f"rate {rate:5.1f}/s seed {seed}: mean ACT vllm {v['act_mean']:.3f} s, "
                        f"gittins {g['act_mean']:.3f} s (x{row['ratio_mean']:.2f}); p95 "
                        f"{v['act_p95']:.3f} / {g['act_p95']:.3f} s (x{row['ratio_p95']:.2f})",
                        flush=True,
                    )
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "llama_cpp_python": version("llama_cpp_python"),
        "settings": {
            "apps": args.apps,
            "rates_per_s": rates,
            "seeds": seeds,
            "mix": list(MIX),
            "training_runs_per_type": args.training_runs,
            "backend": "llama-cpp-python server, tiny random-weight model, 1 thread, concurrency 1",
        },
        "runs": rows,
        "ratio_mean_by_rate": {
            str(rate): sum(r["ratio_mean"] for r in rows if r["rate_per_s"] == rate) / len(seeds)
            for rate in rates
        },
        "wall_s": time.perf_counter() - started,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
