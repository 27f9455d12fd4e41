"""Simulator speed on the Azure conversation trace: this tree against another, or alone.

    python benchmarks/sim_speed.py --baseline-src /tmp/golden_tree/src [--rounds 5] [--json OUT]
    python benchmarks/sim_speed.py [--json OUT] [--repeats 3] [--scales 1,4,16]

A/B (`--baseline-src PATH`): the default `hermes sim` job (all 19,366 requests on two
Llama-2-7B A100 engines, vLLM-style FCFS, `max_model_len` 4,096) simulated by this tree and by
the tree whose `src` is PATH. Each run is a fresh interpreter with PYTHONPATH set to its
tree, so neither tree's imports or caches help the other; the trees take turns (A B, then
B A, ...) over `--rounds` rounds after one uncounted warm-up run each, so drift in the
machine's speed hits both alike. Reported: the median seconds of `hermes.sim.build.simulate`
(building included, interpreter start-up and imports apart), the ratio this / baseline (below
1: this tree is faster), and whether both trees gave the same figures (they should: the same
seed gives the same results). On a busy machine use more rounds.

Alone (no `--baseline-src`), this tree's speed and fidelity:

1. the full trace: wall time (best of --repeats) and the latency figures beside BLIS's;
2. scaling: the trace back to back 1x, 4x and 16x (same load, more requests): wall time per
   request should stay flat if cost is linear;
3. what closed-form decode runs buy: the first --ablation-requests requests with runs on and
   off (same results, measured side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE_SRC = Path(__file__).resolve().parent.parent / "src"
# Results that differ from run to run by nature, left out when the trees are compared.
VOLATILE = ("wall_s", "config")

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


# ---- A/B: one run in a child interpreter --------------------------------------------------


def child(limit: int | None) -> None:
    """Run in the child: time the imports and one default simulation; print JSON."""
    start = time.perf_counter()
    import hermes
    from hermes.sim.build import simulate
    from hermes.sim.config import DEFAULT_CONFIG, RequestWorkload

    imported = time.perf_counter()
    cfg = DEFAULT_CONFIG
    if limit is not None:
        cfg = cfg.model_copy(update={"requests": RequestWorkload(limit=limit)})
    t = time.perf_counter()
    results = simulate(cfg)
    simulate_s = time.perf_counter() - t
    out = {
        "hermes": str(Path(hermes.__file__).resolve().parent),
        "import_s": imported - start,
        "simulate_s": simulate_s,
        "results": {k: v for k, v in results.items() if k not in VOLATILE},
    }
    json.dump(out, sys.stdout)


def run_tree(src: Path, limit: int | None) -> dict[str, Any]:
    """One simulation by the tree whose source is `src`, in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the run with PYTHONPATH={src} failed:\n{proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    if Path(out["hermes"]) != (src / "hermes").resolve():
        raise SystemExit(f"PYTHONPATH={src} ran the hermes in {out['hermes']}; is it a src dir?")
    out["process_s"] = process_s
    return out


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two result trees differ (paths of the leaves)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}".lstrip(".") for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path.lstrip(".") or "(top level)"]


def summary(runs: list[dict[str, Any]], src: Path) -> dict[str, Any]:
    simulate_s = [r["simulate_s"] for r in runs]
    return {
        "src": str(src),
        "simulate_s": simulate_s,
        "median_simulate_s": statistics.median(simulate_s),
        "median_import_s": statistics.median(r["import_s"] for r in runs),
        "median_process_s": statistics.median(r["process_s"] for r in runs),
    }


def ab(baseline: Path, rounds: int, limit: int | None) -> dict[str, Any]:
    """This tree (A) against `baseline` (B), taking turns; medians, ratio, same figures."""
    trees = {"current": HERE_SRC, "baseline": baseline}
    runs: dict[str, list[dict[str, Any]]] = {"current": [], "baseline": []}
    for name in trees:  # warm-up, not counted: file caches, bytecode
        run_tree(trees[name], limit)
    for i in range(rounds):
        order = ("current", "baseline") if i % 2 == 0 else ("baseline", "current")
        for name in order:
            runs[name].append(run_tree(trees[name], limit))
            r = runs[name][-1]
            print(
                f"round {i + 1}/{rounds} {name:8s}: simulate {r['simulate_s']:6.2f} s "
                f"(imports {r['import_s']:.2f} s, process {r['process_s']:.2f} s)"
            )
    current, base = summary(runs["current"], HERE_SRC), summary(runs["baseline"], baseline)
    diff = differences(runs["current"][0]["results"], runs["baseline"][0]["results"])
    ratio = current["median_simulate_s"] / base["median_simulate_s"]
    print(
        f"median simulate: current {current['median_simulate_s']:.3f} s, baseline "
        f"{base['median_simulate_s']:.3f} s, ratio {ratio:.3f}; same figures: {not diff}"
    )
    if diff:
        print(f"  differing: {', '.join(diff[:20])}{' ...' if len(diff) > 20 else ''}")
    return {
        "mode": "ab",
        "scenario": "hermes sim default job: Azure conversation trace, 2x llama-2-7b@a100, vllm",
        "limit": limit,
        "rounds": rounds,
        "requests": runs["current"][0]["results"].get("requests"),
        "current": current,
        "baseline": base,
        "ratio_current_over_baseline": ratio,
        "same_results": not diff,
        "differing_results": diff,
    }


# ---- this tree alone: speed and fidelity --------------------------------------------------


def config(limit: int | None = None, repeat: int = 1) -> Any:
    from hermes.sim.config import DEFAULT_CONFIG, RequestWorkload

    return DEFAULT_CONFIG.model_copy(
        update={"requests": RequestWorkload(limit=limit, repeat=repeat)}
    )


def best_time(cfg: Any, repeats: int, decode_runs: bool = True) -> tuple[float, dict[str, Any]]:
    from hermes.sim.build import simulate

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
    from hermes.profiles import load_profile
    from hermes.sim.build import request_trace
    from hermes.sim.config import RequestWorkload

    profile = load_profile("llama-2-7b@a100")
    params = profile.weight_bytes / 2  # bf16
    trace = request_trace(RequestWorkload(), np.random.default_rng(0))
    prompts = [t.prompt_tokens for t in trace if t.prompt_tokens + t.output_tokens <= 4096]
    return float(np.mean(prompts)) * 2 * params / profile.peak_flops


def full_trace(repeats: int) -> dict[str, Any]:
    wall, full = best_time(config(), repeats)
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
    print(f"full trace: {full['requests']} requests in {wall:.2f} s wall (best of {repeats})")
    for key, value in hermes.items():
        print(f"  {key:22s} hermes {value:10.4f}   blis {BLIS.get(key, float('nan')):10.4f}")
    return {"hermes": hermes, "blis": BLIS, "requests": full["requests"]}


def scaling(scales: str, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for k in (int(s) for s in scales.split(",")):
        w, out = best_time(config(repeat=k), 1 if k > 1 else repeats)
        per = w / out["requests"] * 1e6
        rows.append({"scale": k, "requests": out["requests"], "wall_s": w, "us_per_request": per})
        print(f"scale {k:3d}x: {out['requests']:7d} requests, {w:7.2f} s, {per:6.1f} us/request")
    return rows


def decode_runs(requests: int, repeats: int) -> dict[str, Any]:
    runs_on, out_on = best_time(config(limit=requests), repeats)
    runs_off, out_off = best_time(config(limit=requests), 1, decode_runs=False)
    same = all(out_on[k] == out_off[k] for k in ("completed", "rejected", "preemptions"))
    drift = abs(out_on["e2e"]["mean"] - out_off["e2e"]["mean"]) / out_off["e2e"]["mean"]
    print(
        f"decode runs: {runs_on:.2f} s with, {runs_off:.2f} s without "
        f"({runs_off / runs_on:.1f}x) on {requests} requests; "
        f"same counts: {same}, e2e mean drift {drift:.2e}"
    )
    return {
        "requests": requests,
        "wall_s_with": runs_on,
        "wall_s_without": runs_off,
        "speedup": runs_off / runs_on,
        "same_counts": same,
        "e2e_mean_relative_drift": drift,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--baseline-src", type=Path, help="A/B against the tree of this src")
    parser.add_argument("--rounds", type=int, default=5, help="A/B: runs of each tree")
    parser.add_argument("--limit", type=int, help="A/B: only the first N requests")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--ablation-requests", type=int, default=2000)
    args = parser.parse_args()
    if args.child:
        child(args.limit)
        return
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    if args.baseline_src is not None:
        result |= ab(args.baseline_src.resolve(), args.rounds, args.limit)
    else:
        result["full_trace"] = full_trace(args.repeats)
        result["scaling"] = scaling(args.scales, args.repeats)
        result["decode_runs"] = decode_runs(args.ablation_requests, args.repeats)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
