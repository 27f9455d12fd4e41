"""What moves the tools experiment's policy order: react_alfw's episode lengths, or a PDGraph
that counts a loop's iterations? The experiment's one-instance cells (`hermes bench hermes
--experiments tools`, seed 0, three draws pooled), four ways:

- episodes `lognormal` (the templates: APPS.md's per-run mean 15.7, p50 15, p95 25, max 43) or
  `geometric` (the loop before: exit with probability 0.064 after every step, capped at 43,
  and the 3-token observations fitted to it);
- PDGraphs with their visit counts (`visits`), or without (`markov`: every visit leaves with
  the aggregate probabilities, as a graph read from a file written before visits were counted).

    .venv/bin/python benchmarks/tools_loop_ablation.py \
        --json benchmarks/results/tools_loop_ablation.json

Monkeypatches the react_alfw template in this process (one worker), so run it alone. The
`lognormal` + `visits` rows are the full experiment's one-instance cells, figure for figure.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import hermes.workloads.templates as templates
from hermes.core.pdgraph import PDGraph
from hermes.experiments.common import BASE_WINDOW_S, template_workload
from hermes.experiments.hermes_paper import PAPER_TOOLS, PaperSettings
from hermes.experiments.parallel import Sweep
from hermes.experiments.tool_queues import ToolQueueSettings, tools_experiment
from hermes.sim.build import template_graphs
from hermes.workloads.template_dists import step_exit_prob, tokens

ALFW_END_AFTER_ACT = 0.064  # APPS.md's act -> end frequency
ALFW_MAX_STEPS = 43


class GeometricSteps:
    """The react_alfw loop before: the same exit probability after every step, capped."""

    def __init__(self) -> None:
        self.h = step_exit_prob(ALFW_END_AFTER_ACT, ALFW_MAX_STEPS)

    def sample(self, rng: np.random.Generator) -> int:
        return min(int(rng.geometric(self.h)), ALFW_MAX_STEPS)

    def survival(self) -> NDArray[np.float64]:
        return np.asarray((1 - self.h) ** np.arange(ALFW_MAX_STEPS), dtype=np.float64)


def use_episodes(kind: str) -> None:
    if kind == "geometric":
        templates._ALFW_STEPS = GeometricSteps()  # type: ignore[assignment]
        templates._ALFW_OBSERVATION = tokens(3, 2, 6)
    templates._alfw_few_shot.cache_clear()


def run(episodes: str, graphs_kind: str, s: PaperSettings) -> dict[str, Any]:
    draws = [template_workload(s.mix, s.apps, s.seed + i) for i in range(s.workloads)]
    graphs = template_graphs(list(s.mix), s.training_runs, s.seed)
    if graphs_kind == "markov":
        for g in graphs.values():
            g.visit_edges = {}
            g.version += 1
    spec = replace(s.engine_spec(s.batch_limits[0]), replicas=s.tools_replicas)
    settings = ToolQueueSettings(
        spec, BASE_WINDOW_S / s.tools_intensity, PAPER_TOOLS, (1,), seed=s.seed
    )
    shared: Mapping[str, PDGraph] = graphs
    with Sweep(1, None, shared) as sweep:
        result = tools_experiment(settings, draws, sweep)
    return {layout: cells["1"] for layout, cells in result["sweep"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    s = PaperSettings()
    out: dict[str, Any] = {"command": "python benchmarks/tools_loop_ablation.py", "cells": {}}
    start = time.perf_counter()
    original = (templates._ALFW_STEPS, templates._ALFW_OBSERVATION)
    for episodes in ("geometric", "lognormal"):
        templates._ALFW_STEPS, templates._ALFW_OBSERVATION = original
        use_episodes(episodes)
        for graphs_kind in ("markov", "visits"):
            cells = run(episodes, graphs_kind, s)
            out["cells"][f"{episodes}/{graphs_kind}"] = cells
            for layout, c in cells.items():
                fifo = c["fifo"]["act_mean"]
                print(
                    f"{episodes:9s} {graphs_kind:6s} {layout:8s} FIFO {fifo:6.2f} s  policy "
                    f"{c['policy']['act_mean']:6.2f} s ({c['reduction']:+.1%})  oracle "
                    f"{c['oracle']['act_mean']:6.2f} s ({c['reduction_oracle']:+.1%})  "
                    f"react_alfw policy {c['policy']['act_mean_by_app']['react_alfw']:.2f} s",
                    flush=True,
                )
    out["wall_s"] = time.perf_counter() - start
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
