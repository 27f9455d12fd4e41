"""BROS with and without bidirectional KV blocks when RT requests fill the KV cache.

    python benchmarks/bros_memory_pressure.py [--rates 1,3] [--duration-s 120] [--json OUT]

`hermes bench bros` never fills the KV cache (its RT requests are the Azure trace's, short), so
`bros` and `bros-nobidir` behave the same there. Here one Llama-2-7B A100 engine serves long
RT requests (prompts uniform in [200, 2000) tokens, outputs in [50, 400); Poisson) next to a
standing BE backlog (64 queued; prompts in [512, 1024], outputs in [32, 128]), with TTFT and
TPOT SLOs of 1 s and 150 ms. At 3 RT requests per second the RT requests alone hold most of
the cache, so BE requests are preempted again and again: lazily suspended (bidirectional
blocks) or swapped out whole (`bros-nobidir`). Reported per policy and rate: RT TTFT and
TPOT, BE output tokens per second, and the KV traffic (slots checkpointed to CPU memory and
back, BE requests that lost their KV because CPU memory was full). Requests are measured
over the run after 20 s of warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from hermes.engine.bros_engine import BrosEngine
from hermes.engine.catalog import make_engine
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.profiles import load_profile

TTFT_SLO_S, TPOT_SLO_S = 1.0, 0.15
BE_BACKLOG = 64


def run(policy: str, rate: float, duration_s: float, seed: int) -> dict[str, Any]:
    cost = load_profile("llama-2-7b", "a100", None)
    engine = make_engine(policy, cost, EngineConfig())
    assert isinstance(engine, BrosEngine)
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * duration_s * 2) + 10))
    rts = [
        EngineRequest(
            ("rt", i),
            int(rng.integers(200, 2000)),
            int(rng.integers(50, 400)),
            float(a),
            slo_class="rt",
            ttft_slo_s=TTFT_SLO_S,
            tpot_slo_s=TPOT_SLO_S,
        )
        for i, a in enumerate(arrivals[arrivals < duration_s])
    ]
    bes: list[EngineRequest] = []

    def refill(now: float) -> None:
        waiting = sum(b.state is RequestState.WAITING for b in bes)
        for _ in range(BE_BACKLOG - waiting):
            b = EngineRequest(
                ("be", len(bes)), int(rng.integers(512, 1025)), int(rng.integers(32, 129)), now
            )
            engine.add(b, now)
            bes.append(b)

    now, i = 0.0, 0
    refill(0.0)
    while now < duration_s:
        while i < len(rts) and rts[i].arrival_s <= now:
            engine.add(rts[i], rts[i].arrival_s)
            i += 1
        step = engine.plan(now)
        if step is None:
            now = rts[i].arrival_s
            continue
        now = step.end_s
        engine.complete(step)
        refill(now)
    warm = 20.0
    done = [r for r in rts if r.finish_s is not None and r.arrival_s >= warm]
    ttft = [r.first_token_s - r.arrival_s for r in done if r.first_token_s is not None]
    tpot = [
        (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
        for r in done
        if r.finish_s is not None and r.first_token_s is not None
    ]
    stats = engine.bros
    return {
        "rt_finished": len(done),
        "rt_ttft_mean_s": float(np.mean(ttft)),
        "rt_ttft_p99_s": float(np.percentile(ttft, 99)),
        "rt_tpot_mean_s": float(np.mean(tpot)),
        "rt_tpot_p99_s": float(np.percentile(tpot, 99)),
        "be_tokens_per_s": sum(b.generated for b in bes) / now,
        "suspensions": stats.suspensions,
        "checkpoint_slots": stats.checkpoint_slots,
        "restore_slots": stats.restore_slots,
        "be_recomputed": stats.recomputes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1,3")
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rates = [float(x) for x in args.rates.split(",")]
    results = {
        f"{rate:g}": {p: run(p, rate, args.duration_s, args.seed) for p in ("bros", "bros-nobidir")}
        for rate in rates
    }
    out = {
        "benchmark": "bros_memory_pressure",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "config": {"duration_s": args.duration_s, "seed": args.seed, "rates": rates},
        "results": results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
