"""What a ranking round costs the scheduler, as a function of how many applications are active.

A round is what the simulator does every `rank_interval_s`: `rank_apps` of the `gittins`
policy object itself over every active application (look up each one's remaining-demand
state, then rank them all at their attained service in one batch). Applications are caught
mid-run (a random stage, some calls finished, some service attained) from template runs. Two
rounds are timed per size: one where only the applications with calls on the engines gained
service since the last round (at most `running` of them: what engine batches allow), and one
where every application did (the worst case). Rank states are built before timing: they
change only at stage and call boundaries.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.policies.base import AppView, PolicyContext
from hermes.policies.registry import make_policy
from hermes.profiles import load_profile
from hermes.workloads.templates import generate_runs

DECODE_STEP_S = 0.012  # service one decode iteration adds to a running application


def _views(graphs: Mapping[str, PDGraph], n: int, rng: np.random.Generator) -> list[AppView]:
    apps = sorted(graphs)
    pools = {a: generate_runs(a, 50, seed=int(rng.integers(1 << 30))) for a in apps}
    views = []
    for i in range(n):
        app = apps[int(rng.integers(len(apps)))]
        run = pools[app][int(rng.integers(len(pools[app])))]
        pos = int(rng.integers(len(run.stages)))
        stage = run.stages[pos]
        v = AppView(i, app, 0.0, stage_index=pos, stage=stage, run=run)
        v.finished = list(run.stages[:pos])
        v.unfinished_calls = int(rng.integers(1, stage.fanout + 1))
        v.attained_s = float(rng.exponential(0.5)) if stage.kind == "llm" else 0.0
        views.append(v)
    return views


def _round(policy: Any, views: Sequence[AppView]) -> float:
    start = time.perf_counter()
    policy.rank_apps(views, 1.0)
    return time.perf_counter() - start


def ranking_round_times(
    graphs: Mapping[str, PDGraph],
    sizes: Sequence[int],
    seed: int = 0,
    running: int = 512,
    repeat: int = 5,
) -> dict[str, Any]:
    """Best-of-`repeat` milliseconds per round for each number of active applications."""
    cost = EngineDemandCost(load_profile("llama-2-7b", "a100"))
    models = {name: DemandModel(g, cost) for name, g in graphs.items()}
    rows = []
    for n in sizes:
        rng = np.random.default_rng([seed, n])
        policy = make_policy("gittins", PolicyContext(models, cost, seed=seed))
        views = _views(graphs, n, rng)
        _round(policy, views)  # builds every rank state
        unchanged = min(_round(policy, views) for _ in range(repeat))
        moved = views[: min(n, running)]
        best_some = best_all = float("inf")
        for _ in range(repeat):
            for v in moved:
                v.attained_s += DECODE_STEP_S
            best_some = min(best_some, _round(policy, views))
            for v in views:
                v.attained_s += DECODE_STEP_S
            best_all = min(best_all, _round(policy, views))
        rows.append(
            {
                "apps": n,
                "unchanged_ms": unchanged * 1e3,
                "round_ms": best_some * 1e3,
                "running_gained": len(moved),
                "all_gained_ms": best_all * 1e3,
            }
        )
    return {"machine": f"{platform.processor() or platform.machine()}", "rounds": rows}
