"""Simulator speed and fidelity on the Azure conversation trace.

1. Replay the full trace (19,366 requests) on two Llama-2-7B A100 engines, vLLM-style FCFS,
   max_model_len 4,096: wall time (best of --repeats) and the latency figures beside BLIS's.
2. Scaling: the trace back to back 1x, 4x and 16x (same load, more requests): wall time per
   request should stay flat if cost is linear.
3. What closed-form decode runs buy: the first --ablation-requests requests with runs on and
   off (same results, measured side by side).

Usage: python benchmarks/sim_speed.py [--json OUT] [--repeats 3] [--scales 1,4,16]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np

from hermes.profiles import load_profile
from hermes.sim.build import request_trace, simulate
from hermes.sim.config import DEFAULT_CONFIG, RequestWorkload, SimConfig

# BLIS on the same scenario, as reported in the Hermes issue tracker (issue 3): its own model
# of vLLM, not a measurement of vLLM.
BLIS = {
    "ttft_mean_s": 0.045,
    "ttft_p99_s": 0.080,
    "e2e_mean_s": 3.62,
    "e2e_p90_s": 7.47,
    "e2e_p99_s": 10.43,
    "itl_mean_s": 0.0160,
    "rejected": 1612,
    "wall_s_this_machine": 24.0,
}


def config(limit: int | None = None, repeat: int = 1) -> SimConfig:
    return DEFAULT_CONFIG.model_copy(
        update={"requests": RequestWorkload(limit=limit, repeat=repeat)}
    )


def timed(cfg: SimConfig, repeats: int, decode_runs: bool = True) -> tuple[float, dict[str, Any]]:
    best = float("inf")
    out: dict[str, Any] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        out = simulate(cfg, decode_runs=decode_runs)
        best = min(best, time.perf_counter() - start)
    return best, out


def ttft_floor() -> float:
    """Mean TTFT no A100 can beat: each accepted prompt's dense FLOPs (2 per parameter per
    token) at 100 % of peak, with no queueing and no attention."""
    profile = load_profile("llama-2-7b@a100")
    params = profile.weight_bytes / 2  # bf16
    trace = request_trace(RequestWorkload(), np.random.default_rng(0))
    prompts = [t.prompt_tokens for t in trace if t.prompt_tokens + t.output_tokens <= 4096]
    return float(np.mean(prompts)) * 2 * params / profile.peak_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--ablation-requests", type=int, default=2000)
    args = parser.parse_args()

    wall, full = timed(config(), args.repeats)
    hermes = {
        "ttft_mean_s": full["ttft"]["mean"],
        "ttft_p99_s": full["ttft"]["p99"],
        "e2e_mean_s": full["e2e"]["mean"],
        "e2e_p90_s": full["e2e"]["p90"],
        "e2e_p99_s": full["e2e"]["p99"],
        "itl_mean_s": full["itl"]["mean"],
        "queueing_mean_s": full["queueing"]["mean"],
        "rejected": full["rejected"],
        "wall_s_this_machine": wall,
    }
    hermes["ttft_floor_s"] = ttft_floor()
    print(f"full trace: {full['requests']} requests in {wall:.2f} s wall (best of {args.repeats})")
    for key, value in hermes.items():
        print(f"  {key:22s} hermes {value:10.4f}   blis {BLIS.get(key, float('nan')):10.4f}")

    scaling = []
    for k in (int(s) for s in args.scales.split(",")):
        w, out = timed(config(repeat=k), 1 if k > 1 else args.repeats)
        per = w / out["requests"] * 1e6
        scaling.append(
            {"scale": k, "requests": out["requests"], "wall_s": w, "us_per_request": per}
        )
        print(f"scale {k:3d}x: {out['requests']:7d} requests, {w:7.2f} s, {per:6.1f} us/request")

    runs_on, out_on = timed(config(limit=args.ablation_requests), args.repeats)
    runs_off, out_off = timed(config(limit=args.ablation_requests), 1, decode_runs=False)
    same = all(out_on[k] == out_off[k] for k in ("completed", "rejected", "preemptions"))
    drift = abs(out_on["e2e"]["mean"] - out_off["e2e"]["mean"]) / out_off["e2e"]["mean"]
    print(
        f"decode runs: {runs_on:.2f} s with, {runs_off:.2f} s without "
        f"({runs_off / runs_on:.1f}x) on {args.ablation_requests} requests; "
        f"same counts: {same}, e2e mean drift {drift:.2e}"
    )

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "full_trace": {"hermes": hermes, "blis": BLIS, "requests": full["requests"]},
        "scaling": scaling,
        "decode_runs": {
            "requests": args.ablation_requests,
            "wall_s_with": runs_on,
            "wall_s_without": runs_off,
            "speedup": runs_off / runs_on,
            "same_counts": same,
            "e2e_mean_relative_drift": drift,
        },
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
