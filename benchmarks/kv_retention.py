"""KV retention while applications run tool stages (`experiments.kv_retention`: the paper's
mix on one Llama-2-7B A100 engine with a tight pool, with a CPU tier, and a roomy one, under
lru, ttl and pdgraph); `hermes bench hermes --experiments kv` runs the same.

    .venv/bin/python benchmarks/kv_retention.py --json benchmarks/results/kv_retention.json

`--pools 250,400,600,800,1200` runs GPU pools of those many blocks instead (no CPU tier), to
see where between thrashing and room retention matters most, and how much a free cache (the
reference) would give there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hermes.experiments.kv_retention import kv_experiment


def _pools(text: str) -> dict[str, dict[str, Any]]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        msg = f"--pools: comma-separated block counts, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--pools: positive block counts, got {text!r}")
    return {f"{n} blocks": {"num_gpu_blocks": n} for n in sizes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--pools", type=_pools, help="GPU pool sizes in blocks, e.g. 250,400,600")
    args = p.parse_args()
    results = kv_experiment(progress=print, settings=args.pools)["by_setting"]
    for name, rows in results.items():
        for r, fig in rows.items():
            print(
                f"{name:17s} {r:8s} ACT mean {fig['act_mean']:6.2f} s P95 {fig['act_p95']:6.1f} s "
                f"hit {fig['hit_rate']:.3f} prefill {fig['prefill_tokens']}"
            )
        lru = rows["lru"]["act_mean"]
        cuts = {r: 100 * (rows[r]["act_mean"] / lru - 1) for r in rows if r != "lru"}
        ttl_cut = 100 * (rows["pdgraph"]["act_mean"] / rows["ttl"]["act_mean"] - 1)
        print(f"{name:17s} against lru: " + ", ".join(f"{r} {c:+.1f} %" for r, c in cuts.items()))
        print(f"{name:17s} pdgraph against ttl: {ttl_cut:+.1f} %")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
