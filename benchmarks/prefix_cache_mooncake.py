"""Prefix caching on the Mooncake conversation trace (Llama-3-8B, 4 x H100,
max_model_len 131072): the hit rate the simulated engines reach, by router and with a CPU
tier, against what an infinite cache could hit and what one LRU cache pooled over the same
capacity would hit (both from `hash_ids` alone), and mean TTFT against no prefix caching.

    .venv/bin/python benchmarks/prefix_cache_mooncake.py \
        --json benchmarks/results/prefix_cache_mooncake.json

The trace lives in ../shared/data (not shipped). Each `hash_ids` entry is a 512-token block;
a request's last block may be partial and is not cacheable; at least one prompt token is
always computed, as the engines do.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from hermes.sim.build import simulate
from hermes.sim.config import config_from_dict
from hermes.workloads.request_traces import TraceRequest, read_trace

TRACE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mooncake_conversation_trace.jsonl"
)
BLOCK = 512


def _full_ids(t: TraceRequest) -> tuple[int, ...]:
    return t.prefix_blocks[: min(len(t.prefix_blocks), t.prompt_tokens // BLOCK)]


def _hit(t: TraceRequest, present: Any) -> int:
    ids = _full_ids(t)
    k = 0
    while k < len(ids) and ids[k] in present:
        k += 1
    return min(k * BLOCK, max(0, t.prompt_tokens - 1) // 16 * 16)


def ideal_hit_rates(trace: list[TraceRequest], capacity_tokens: int) -> dict[str, float]:
    """(infinite cache, one LRU cache of `capacity_tokens`) hit rates, in arrival order."""
    seen: set[int] = set()
    lru: OrderedDict[int, None] = OrderedDict()
    slots = capacity_tokens // BLOCK
    prompt = hit_inf = hit_lru = 0
    for t in trace:
        prompt += t.prompt_tokens
        hit_inf += _hit(t, seen)
        hit_lru += _hit(t, lru)
        for i in _full_ids(t):
            seen.add(i)
            lru[i] = None
            lru.move_to_end(i)
            if len(lru) > slots:
                lru.popitem(last=False)
    return {"infinite": hit_inf / prompt, "pooled_lru": hit_lru / prompt}


def run(router: str, caching: bool = True, cpu_kv_gb: float = 0.0) -> dict[str, Any]:
    group = {
        "model": "llama-3-8b",
        "gpu": "h100",
        "count": 4,
        "max_model_len": 131072,
        "enable_prefix_caching": caching,
        "cpu_kv_gb": cpu_kv_gb,
    }
    cfg = config_from_dict(
        {"router": router, "instances": [group], "requests": {"trace": str(TRACE)}}
    )
    start = time.perf_counter()
    out = simulate(cfg)
    return {
        "router": router,
        "prefix_caching": caching,
        "cpu_kv_gb_per_instance": cpu_kv_gb,
        "prefix_cache": out["prefix_cache"],
        "ttft_mean_s": out["ttft"]["mean"],  # type: ignore[index]
        "ttft_p99_s": out["ttft"]["p99"],  # type: ignore[index]
        "output_tokens_per_s": out["output_tokens_per_s"],
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--cpu-kv-gb", type=float, default=512.0)
    args = p.parse_args()
    runs = [
        run("least-outstanding", caching=False),
        run("least-outstanding"),
        run("prefix"),
        run("prefix", cpu_kv_gb=args.cpu_kv_gb),
    ]
    trace = read_trace(TRACE)
    for r in runs:
        pc = r["prefix_cache"]
        capacity = pc["gpu_capacity_tokens"] + pc["cpu_capacity_tokens"]
        r["ideal"] = ideal_hit_rates(trace, capacity) if r["prefix_caching"] else None
        ideal = r["ideal"] or {}
        print(
            f"{r['router']:18s} caching={r['prefix_caching']!s:5s} "
            f"cpu={r['cpu_kv_gb_per_instance']:5.0f} GB  "
            f"hit {pc['hit_rate'] or 0:.3f} (pooled LRU {ideal.get('pooled_lru', 0):.3f}, "
            f"infinite {ideal.get('infinite', 0):.3f})  TTFT mean {r['ttft_mean_s']:.2f} s"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
