"""Why the Mooncake conversation trace's mean TTFT without prefix caching is 1.69 s in
benchmarks/prefix_cache_mooncake.py and 59 s in the issue that asked for prefix caching: the
load the trace offers the four simulated H100s (Llama-3-8B), what the cost model charges for
long prompts, how close the replay runs to the engines' capacity (the trace replayed faster),
and the router.

    .venv/bin/python benchmarks/mooncake_load.py --json benchmarks/results/mooncake_load.json

The trace lives in ../shared/data (not shipped).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.profiles import load_profile
from hermes.sim.build import simulate
from hermes.sim.config import config_from_dict
from hermes.workloads.request_traces import read_trace
from prefix_cache_mooncake import TRACE

ENGINES = 4
PROMPTS = (2048, 8192, 12_000, 32_768, 65_536, 126_195)  # 126,195: the trace's longest


def chunked_prefill_s(m: StepCostModel, prompt: int, budget: int) -> float:
    """Seconds of engine time a prompt's prefill takes in chunks of `budget` tokens, alone
    (each chunk attends to the chunks before it)."""
    total, done = 0.0, 0
    while done < prompt:
        n = min(budget, prompt - done)
        total += m.step_time_s(n, 0, 0, n * (done + n / 2.0), 0, num_prefill_seqs=1)
        done += n
    return total


def offered_load() -> dict[str, Any]:
    """Tokens per second of the trace, and the prefill engine time the cost model charges for
    them per engine-second of four engines; the cost of single prompts and attention's share."""
    m = load_profile("llama-3-8b", "h100")
    budget = EngineConfig().max_num_batched_tokens
    trace = read_trace(TRACE)
    span = max(t.arrival_s for t in trace) - min(t.arrival_s for t in trace)
    prompts = np.array([t.prompt_tokens for t in trace], dtype=np.float64)
    outputs = np.array([t.output_tokens for t in trace], dtype=np.float64)
    prefill = sum(chunked_prefill_s(m, int(p), budget) for p in prompts)
    per_pair = m.step_time_s(0, 0, 0, 1.0, 0) - m.step_time_s(0, 0, 0, 0.0, 0)
    attention = float((prompts * prompts / 2.0).sum()) * per_pair
    return {
        "requests": len(trace),
        "span_s": span,
        "prompt_tokens_per_s": float(prompts.sum() / span),
        "output_tokens_per_s": float(outputs.sum() / span),
        "prompt_tokens_mean": float(prompts.mean()),
        "prompt_tokens_p99": float(np.percentile(prompts, 99)),
        "prefill_token_budget": budget,
        "prefill_engine_s_per_engine_s": prefill / (ENGINES * span),
        "prefill_attention_share": attention / prefill,
        "prefill_s_alone": {str(p): chunked_prefill_s(m, p, budget) for p in PROMPTS},
        "prefill_s_per_attention_pair": per_pair,
    }


def replay(router: str, time_scale: float = 1.0, caching: bool = False) -> dict[str, Any]:
    group = {
        "model": "llama-3-8b",
        "gpu": "h100",
        "count": ENGINES,
        "max_model_len": 131072,
        "enable_prefix_caching": caching,
    }
    requests = {"trace": str(TRACE), "arrivals": {"time_scale": time_scale}}
    cfg = config_from_dict({"router": router, "instances": [group], "requests": requests})
    start = time.perf_counter()
    out = simulate(cfg)
    engines = out["instances"]
    assert isinstance(engines, list)
    return {
        "router": router,
        "time_scale": time_scale,
        "prefix_caching": caching,
        "ttft_mean_s": out["ttft"]["mean"],  # type: ignore[index]
        "ttft_p99_s": out["ttft"]["p99"],  # type: ignore[index]
        "preemptions": out["preemptions"],
        "by_engine": [
            {k: e[k] for k in ("requests", "prefill_tokens", "preemptions", "kv_mean_use")}
            for e in engines
        ],
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--scales", default="1,0.95,0.9,0.85,0.8,0.7")
    args = p.parse_args()
    load = offered_load()
    print(
        f"{load['prompt_tokens_per_s']:,.0f} prompt and {load['output_tokens_per_s']:,.0f} "
        f"output tokens/s; prefill {load['prefill_engine_s_per_engine_s']:.2f} engine-s per "
        f"engine-s ({100 * load['prefill_attention_share']:.0f} % attention)"
    )
    runs = [replay("least-outstanding", float(s)) for s in args.scales.split(",")]
    runs += [replay(r) for r in ("round-robin", "least-kv")]
    runs.append(replay("round-robin", caching=True))
    for r in runs:
        kv = " ".join(f"{e['kv_mean_use']:.2f}" for e in r["by_engine"])
        print(
            f"{r['router']:18s} x{1 / r['time_scale']:.2f} load  caching={r['prefix_caching']!s:5s}"
            f"  TTFT mean {r['ttft_mean_s']:8.2f} s  p99 {r['ttft_p99_s']:8.1f} s  "
            f"preemptions {r['preemptions']:6d}  KV use by engine {kv}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"offered": load, "replays": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
