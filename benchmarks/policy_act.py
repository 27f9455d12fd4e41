"""Application completion time (ACT) by scheduling policy: a first look before `hermes bench`.

The issue's mix (factool_code 16, factool_kbqa 16, react_alfw 16, langchain_mapreduce 16,
factool_math 4, react_fever 4), 200 applications, Poisson arrivals packed into 30/k minutes,
one Llama-2-7B on one A100. `--max-num-seqs` bounds the batch: with vLLM's default 256 the
engine admits nearly every call at once, so no queue forms and order cannot matter.

Usage: python benchmarks/policy_act.py [--intensity 3] [--max-num-seqs 256,8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from hermes.sim.build import simulate
from hermes.sim.config import AppWorkload, Arrivals, InstanceGroup, SimConfig

MIX = {
    "factool_code": 16,
    "factool_kbqa": 16,
    "react_alfw": 16,
    "langchain_mapreduce": 16,
    "factool_math": 4,
    "react_fever": 4,
}
POLICIES = "vllm,parrot,vtc,plas,srjf-mean,gittins,oracle"


def run(policy: str, intensity: float, seqs: int, seed: int) -> dict[str, Any]:
    cfg = SimConfig(
        seed=seed,
        policy=policy,
        instances=[InstanceGroup(count=1, max_num_seqs=seqs)],
        apps=AppWorkload(
            templates=MIX,
            count=200,
            arrivals=Arrivals(process="poisson", window_s=1800.0 / intensity),
        ),
    )
    start = time.perf_counter()
    out = simulate(cfg)
    apps = out["apps"]
    assert isinstance(apps, dict)
    act = apps["act"]
    return {
        "act_mean": act["mean"],
        "act_p50": act["p50"],
        "act_p95": act["p95"],
        "act_p99": act["p99"],
        "completed": apps["completed"],
        "queueing_mean_s": out["queueing"]["mean"],  # type: ignore[index]
        "utilisation": out["instances"][0]["utilisation"],  # type: ignore[index]
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intensity", type=float, default=3.0)
    parser.add_argument("--max-num-seqs", default="256,8")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    results: dict[str, Any] = {"intensity": args.intensity, "seed": args.seed, "runs": {}}
    for seqs in (int(s) for s in args.max_num_seqs.split(",")):
        rows = {}
        for policy in args.policies.split(","):
            r = rows[policy] = run(policy, args.intensity, seqs, args.seed)
            print(
                f"max_num_seqs {seqs:3d} {policy:10s} ACT mean {r['act_mean']:6.1f} "
                f"p50 {r['act_p50']:6.1f} p95 {r['act_p95']:6.1f} p99 {r['act_p99']:6.1f} s  "
                f"queueing {r['queueing_mean_s']:5.2f} s  busy {r['utilisation']:.2f}",
                flush=True,
            )
        results["runs"][str(seqs)] = rows
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
