"""Speed of QLM's planning round: 1,000 groups over 8 instances (target ≤ 50 ms).

    python benchmarks/qlm_planner.py [--groups 1000] [--instances 8] [--repeats 30] [--json OUT]

The groups: 3 models, 3 SLO classes (10% interactive 20 s, 20% standard 60 s, 70% batch
3,600 s), 1 to 64 requests each, arrived within the last half of their SLO; instances
have one of the models active (the first two models on three instances each, the third on
two), Θ = 6,000 tokens/s, up to 5 s of running work and swap costs of 2 s (warm) or 8 s
(cold); output lengths are learned from 8 samples per group key. Rounds are
drawn until EDF predicts violations, so every timed round is one in which the MILP runs.
Reported per path (`plan_edf` alone, `plan` = EDF then the MILP): median and p95 wall time,
and the violations each predicts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from hermes.policies.qlm import (
    GroupKey,
    GroupView,
    InstanceView,
    LengthStats,
    MilpSettings,
    QLMOptions,
    plan,
    plan_edf,
    z_for,
)

MODELS = ("llama-7b", "mistral-7b", "vicuna-13b")
CLASSES = {"interactive": 20.0, "standard": 60.0, "batch": 3600.0}
DEFAULTS = QLMOptions()  # what `qlm` plans with
THROUGHPUT_TOK_S = 6000.0  # a large batch of decodes on one GPU


def make_round(
    rng: np.random.Generator, n_groups: int, n_instances: int
) -> tuple[list[GroupView], list[InstanceView], LengthStats]:
    stats = LengthStats(prior_mean=200.0, prior_std=120.0)
    for m in MODELS:
        for c in CLASSES:
            for b in range(4, 11):
                for v in rng.gamma(2.0, 100.0, size=8):
                    stats.observe(GroupKey(m, c, b), float(v))
    classes = list(CLASSES)
    groups = []
    for gid in range(n_groups):
        cls = classes[int(rng.choice(3, p=[0.1, 0.2, 0.7]))]
        slo = CLASSES[cls]
        # Arrived up to an SLO ago (an interactive group may already be nearly due).
        arrival = -rng.uniform(0.0, 0.5 * slo)
        groups.append(
            GroupView(
                gid,
                GroupKey(str(rng.choice(MODELS)), cls, int(rng.integers(4, 11))),
                int(rng.integers(1, 65)),
                arrival + slo,
            )
        )
    instances = []
    for i in range(n_instances):
        active = MODELS[min(2, i * 3 // n_instances)]
        warm = frozenset(m for m in MODELS if m != active and rng.random() < 0.5)
        swap = {m: 0.0 if m == active else (2.0 if m in warm else 8.0) for m in MODELS}
        instances.append(
            InstanceView(f"gpu{i}", active, warm, swap, THROUGHPUT_TOK_S, float(rng.uniform(0, 5)))
        )
    return groups, instances, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--time-limit", type=float, default=DEFAULTS.time_limit_s)
    ap.add_argument("--window", type=int, default=DEFAULTS.milp_window)
    ap.add_argument("--gap", type=float, default=DEFAULTS.mip_rel_gap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    z = z_for(DEFAULTS.violation_probability)
    settings = MilpSettings(args.window, args.gap)

    edf_ms: list[float] = []
    plan_ms: list[float] = []
    edf_late: list[int] = []
    plan_late: list[int] = []
    solvers: dict[str, int] = {}
    hit_limit = 0
    # Warm up imports and HiGHS once.
    g, inst, stats = make_round(rng, args.groups, args.instances)
    plan(g, inst, 0.0, stats, z, args.time_limit, settings=settings)
    while len(plan_ms) < args.repeats:
        g, inst, stats = make_round(rng, args.groups, args.instances)
        t = time.perf_counter()
        e = plan_edf(g, inst, 0.0, stats, z)
        edf_ms.append((time.perf_counter() - t) * 1e3)
        if e.predicted_violations == 0:
            edf_ms.pop()
            continue
        t = time.perf_counter()
        p = plan(g, inst, 0.0, stats, z, args.time_limit, settings=settings)
        plan_ms.append((time.perf_counter() - t) * 1e3)
        edf_late.append(e.predicted_violations)
        plan_late.append(p.predicted_violations)
        solvers[p.solver] = solvers.get(p.solver, 0) + 1
        hit_limit += p.hit_time_limit

    def summary(ms: list[float]) -> dict[str, float]:
        return {
            "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "max_ms": round(max(ms), 2),
        }

    out = {
        "groups": args.groups,
        "instances": args.instances,
        "repeats": args.repeats,
        "time_limit_s": args.time_limit,
        "milp": {"window": settings.window, "mip_rel_gap": settings.mip_rel_gap},
        "edf": summary(edf_ms),
        "plan": summary(plan_ms),
        "violations_edf_mean": round(statistics.mean(edf_late), 2),
        "violations_plan_mean": round(statistics.mean(plan_late), 2),
        "rounds_improved": sum(p < e for p, e in zip(plan_late, edf_late, strict=True)),
        "solver": solvers,
        "hit_time_limit": hit_limit,
        "target_ms": 50.0,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
