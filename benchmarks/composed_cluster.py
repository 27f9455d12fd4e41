"""The composed cluster of examples/composed.yaml (agents and an RT chat on one Llama-2-7B
engine, bursty batch jobs on two models sharing two A100s) under its policies, against the
same cluster with vLLM's behaviour everywhere: FCFS ranking, a FCFS engine, and FCFS per
model on GPUs that never swap.

    .venv/bin/python benchmarks/composed_cluster.py --json benchmarks/results/composed/summary.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from hermes.sim.build import simulate
from hermes.sim.config import config_from_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "composed.yaml"
SETTINGS = {
    "composed": {"policy": "gittins", "engine": "bros", "queue_policy": "qlm"},
    "vllm everywhere": {"policy": "vllm", "engine": "vllm", "queue_policy": "vllm"},
}


def run(setting: dict[str, str]) -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["policy"] = setting["policy"]
    data["instances"][0]["engine"] = setting["engine"]
    data["shared_gpus"][0]["queue_policy"] = setting["queue_policy"]
    start = time.perf_counter()
    out = simulate(config_from_dict(data))
    streams = out["streams"]
    assert isinstance(streams, dict)
    return {
        **setting,
        "act_mean_s": out["act"]["mean"],  # type: ignore[index]
        "act_p95_s": out["act"]["p95"],  # type: ignore[index]
        "slo_attainment": out["slo_attainment"],
        "model_swaps": out["model_swaps"],
        "chat_ttft_p99_s": streams["chat"]["ttft"]["p99"],
        "output_tokens_per_s": out["output_tokens_per_s"],
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    results = {name: run(s) for name, s in SETTINGS.items()}
    for name, r in results.items():
        print(
            f"{name:16s} ACT mean {r['act_mean_s']:.1f} s, P95 {r['act_p95_s']:.1f} s; "
            f"SLO met {r['slo_attainment']}; swaps {r['model_swaps']}; "
            f"chat TTFT p99 {r['chat_ttft_p99_s']:.2f} s; {r['output_tokens_per_s']:.0f} tok/s"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
