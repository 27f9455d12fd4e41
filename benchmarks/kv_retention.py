"""KV retention while applications run tool stages (`experiments.kv_retention`: the paper's
mix on one Llama-2-7B A100 engine with a tight pool, with a CPU tier, and a roomy one, under
lru, ttl and pdgraph); `hermes bench hermes --experiments kv` runs the same.

    .venv/bin/python benchmarks/kv_retention.py --json benchmarks/results/kv_retention.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hermes.experiments.kv_retention import kv_experiment


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = kv_experiment(progress=print)["by_setting"]
    for name, rows in results.items():
        for r, fig in rows.items():
            print(
                f"{name:17s} {r:8s} ACT mean {fig['act_mean']:6.2f} s P95 {fig['act_p95']:6.1f} s "
                f"hit {fig['hit_rate']:.3f} prefill {fig['prefill_tokens']}"
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
