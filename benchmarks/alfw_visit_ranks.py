"""The Gittins rank and mean remaining demand of a react_alfw application waiting at its act,
by step, from a PDGraph learned as the benches learn it (300 template runs, the default
demand cost: LLM seconds, tool seconds weigh 0), with its visit counts and without them.

    .venv/bin/python benchmarks/alfw_visit_ranks.py \
        --json benchmarks/results/alfw_visit_ranks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.pdgraph import PDGraph
from hermes.core.rank_cache import GittinsRanker
from hermes.sim.build import template_graphs
from hermes.workloads.templates import generate_runs

STEPS = (1, 2, 5, 10, 15, 20, 25, 30)


def table(graph: PDGraph, stages: tuple[Any, ...]) -> list[dict[str, float]]:
    model = DemandModel(graph)
    ranker = GittinsRanker({"react_alfw": model}, samples=1000)
    rows = []
    for step in STEPS:
        progress = Progress("act", 1, stages[: 2 * step - 1])  # `step` thoughts done
        left = model.remaining(progress, 4000, np.random.default_rng(step))
        rank = ranker.state("react_alfw", progress).rank(0.0)
        rows.append({"step": step, "rank_s": rank, "remaining_mean_s": float(left.mean())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    graph = template_graphs(["react_alfw"], 300, 0)["react_alfw"]
    # The stages done so far: those of a template episode long enough for every step asked.
    long = next(r for r in generate_runs("react_alfw", 500, 1) if r.llm_call_count > max(STEPS))
    markov = PDGraph.from_dict({**graph.to_dict(), "visit_edges": {}})
    out = {"visits": table(graph, long.stages), "markov": table(markov, long.stages)}
    for kind, rows in out.items():
        print(kind)
        for r in rows:
            print(
                f"  act step {r['step']:2d}: rank {r['rank_s']:.2f} s, "
                f"mean remaining {r['remaining_mean_s']:.2f} s"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
