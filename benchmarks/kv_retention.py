"""KV retention while applications run tool stages: the Hermes paper's six-application mix
(100 applications over 5 minutes, Gittins ranking) on one Llama-2-7B A100 engine, with a
tight KV pool (400 blocks of 16 tokens, with and without a 2 GiB CPU tier) and a roomy one
(the A100's full pool), under retention lru (vLLM), ttl (Continuum) and pdgraph (Hermes).

    .venv/bin/python benchmarks/kv_retention.py --json benchmarks/results/kv_retention.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hermes.experiments.common import PAPER_MIX
from hermes.sim.build import simulate
from hermes.sim.config import config_from_dict

SETTINGS: dict[str, dict[str, Any]] = {
    "tight": {"num_gpu_blocks": 400},
    "tight + CPU tier": {"num_gpu_blocks": 400, "cpu_kv_gb": 2.0},
    "roomy": {},
}


def run(setting: dict[str, Any], retention: str) -> dict[str, Any]:
    cfg = config_from_dict(
        {
            "seed": 0,
            "policy": "gittins",
            "kv_retention": retention,
            "instances": [{"model": "llama-2-7b", "count": 1, **setting}],
            "apps": {
                "templates": PAPER_MIX,
                "count": 100,
                "arrivals": {"process": "poisson", "window_s": 300},
            },
        }
    )
    out = simulate(cfg)
    pc = out["prefix_cache"]
    assert isinstance(pc, dict)
    return {
        "act_mean": out["act"]["mean"],  # type: ignore[index]
        "act_p95": out["act"]["p95"],  # type: ignore[index]
        "hit_rate": pc["hit_rate"],
        "reloaded_tokens": pc["reloaded_tokens"],
        "prefill_tokens": sum(i["prefill_tokens"] for i in out["instances"]),  # type: ignore[attr-defined]
        "preemptions": out["preemptions"],
        "retention": out.get("kv_retention"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        results[name] = {r: run(setting, r) for r in ("lru", "ttl", "pdgraph")}
        for r, fig in results[name].items():
            print(
                f"{name:17s} {r:8s} ACT mean {fig['act_mean']:6.2f} s P95 {fig['act_p95']:6.1f} s "
                f"hit {fig['hit_rate']:.3f} prefill {fig['prefill_tokens']}",
                flush=True,
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
