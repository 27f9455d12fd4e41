"""Admission at vLLM's defaults (issue 15): gittins+auto beside a sweep of fixed limits.

Three parts, each written as JSON under the output directory:

- `mix.json`: the paper's six-application mix (200 applications, three draws pooled) on one
  simulated Llama-2-7B A100 engine at vLLM's defaults (256 sequences, prefix caching on):
  vllm, gittins, gittins+N (N = 4 ... 128) and gittins+auto at each intensity, with the issue's
  targets (`hermes bench hermes --experiments admission` runs the same);
- `runs_k<intensity>.json`: the recorded-run mode on runs generated from the six templates
  (`hermes generate`; no recordings of real applications ship with the repository), the
  policies vllm, gittins, gittins+8, gittins+32 and gittins+auto;
- `cost.json`: what one `AutoLimit.observe` costs (the shells call it after every engine step
  or call end), over 200,000 calls with a fit every second of their clock;
- `synthetic.json`: the synthetic engine (`sim.admission_synthetic`: t(c) = a + b c, Poisson
  calls, shortest first) where the weights dominate an iteration, where each sequence's KV
  does, and between, at three loads: mean latency of each fixed limit and of auto.

    .venv/bin/python benchmarks/admission_sweep.py --out benchmarks/results/admission
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hermes.experiments.hermes_paper import PaperSettings, run_all
from hermes.experiments.recorded_runs import RecordedSettings, recorded_bench
from hermes.policies.admission import make_admission
from hermes.sim.admission_synthetic import Phase, run_synthetic
from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

LIMITS = (4, 8, 16, 32, 64, 128)
RUNS_POLICIES = ("vllm", "gittins", "gittins+8", "gittins+32", "gittins+auto")
ENGINES = {"weights-bound": (0.02, 0.0001), "kv-bound": (0.005, 0.001), "between": (0.01, 0.0004)}


def mix(intensities: tuple[float, ...], workloads: int, apps: int) -> dict[str, Any]:
    s = PaperSettings(
        apps=apps,
        intensities=intensities,
        headline_intensity=max(intensities),
        workloads=workloads,
        experiments=("admission",),
        admission_limits=LIMITS,
    )
    r = run_all(s, progress=lambda m: print(f"  {m}", flush=True))
    return {"admission": r["admission"], "targets": r["targets"], "wall_s": r["wall_s"]}


def recorded(intensity: float, apps: int) -> dict[str, Any]:
    runs = [r for k, app in enumerate(TEMPLATE_NAMES) for r in generate_runs(app, 100, seed=k)]
    s = RecordedSettings(intensity=intensity, policies=RUNS_POLICIES, apps=apps)
    return recorded_bench(runs, s)


def synthetic() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (a, b) in ENGINES.items():
        cap = 256 / (a + 256 * b)
        for load in (0.3, 0.6, 0.85):
            phases = [Phase(120.0, load * cap / 100, 100.0, a, b)]
            row = {}
            for spec in [*map(str, LIMITS), "none", "auto"]:
                run = run_synthetic(make_admission(spec, 256), phases, seed=1)
                row[spec] = {"mean_latency_s": run.mean_latency, "end_s": run.end_s}
            out[f"{name}, load {load}"] = {"a_s": a, "b_s": b, "rows": row}
    return out


def cost(n: int = 200_000) -> dict[str, Any]:
    ctl = make_admission("auto", 256)
    tokens = 0
    start = time.perf_counter()
    for i in range(n):
        tokens += 10
        ctl.observe(i * 0.01, in_engine=i % 50 + 1, waiting=i % 7, output_tokens=tokens)
    per = (time.perf_counter() - start) / n
    return {"observe_us": per * 1e6, "calls": n, "decisions": getattr(ctl, "decisions", None)}


def _print_mix(r: dict[str, Any]) -> None:
    for k, rows in r["admission"]["by_intensity"].items():
        print(f"intensity {k}")
        for p, row in rows.items():
            if not p.startswith("_"):
                print(
                    f"  {p:14s} ACT {row['act_mean']:7.2f} P95 {row['act_p95']:7.1f} "
                    f"makespan {row['makespan_s']:7.1f} tok/s {row['output_tokens_per_s']:7.1f} "
                    f"limit {row['mean_limit']}"
                )
        print(f"  best fixed: {rows['_best_fixed']}")
    for t in r["targets"]:
        print(f"  {t['met']!s:5s} {t['target']}: {t['measured']} ({t['goal']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/admission"))
    p.add_argument("--intensities", default="1,1.5,2,2.5,3")
    p.add_argument("--workloads", type=int, default=3)
    p.add_argument("--apps", type=int, default=200)
    p.add_argument("--parts", default="cost,synthetic,runs,mix")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")

    def write(name: str, data: dict[str, Any]) -> None:
        (args.out / name).write_text(json.dumps(data, indent=1) + "\n")

    start = time.perf_counter()
    if "cost" in parts:
        c = cost()
        print(f"AutoLimit.observe: {c['observe_us']:.1f} us per call", flush=True)
        write("cost.json", c)
    if "synthetic" in parts:
        syn = synthetic()
        for case, row in syn.items():
            cells = " ".join(f"{k}:{v['mean_latency_s']:.2f}" for k, v in row["rows"].items())
            print(f"{case:24s} {cells}", flush=True)
        write("synthetic.json", syn)
    if "runs" in parts:
        for k in (1.0, 3.0):
            r = recorded(k, args.apps)
            for pol, row in r["policies"].items():
                print(
                    f"runs k={k:g} {pol:14s} ACT {row['act_mean']:7.2f} P95 {row['act_p95']:7.1f} "
                    f"makespan {row['makespan_s']:7.1f}",
                    flush=True,
                )
            write(f"runs_k{k:g}.json", r)
    if "mix" in parts:
        ks = tuple(float(x) for x in args.intensities.split(","))
        r = mix(ks, args.workloads, args.apps)
        _print_mix(r)
        write("mix.json", r)
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
