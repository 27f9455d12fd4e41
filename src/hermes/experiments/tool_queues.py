"""The `tools` experiment: tool pools with limited instances, their waiting calls granted first
come first served (`fifo`) or by their applications' rank (`policy`, the LLM queue's order),
under gittins.

The LLM side is made roomy (several replicas) so that the tool pools, not the engine, are where
calls wait. Two layouts of the mix's sandboxed tools: `separate` (code execution in `docker`
sandboxes, ALFWorld in `env` instances, each pool of n instances) and `shared` (one pool of n
`sandbox` containers runs both, as a platform that sandboxes every tool would). Web search is
a hosted API: unlimited, it never queues. The headline is the shared pool at the fewest
instances, where the order has the most to decide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from hermes.cluster.tool_pool import ToolOrder
from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.experiments.common import EngineSpec, config_for, reduction, spread_over
from hermes.experiments.parallel import Sweep
from hermes.sim.build import build
from hermes.sim.config import ToolBackend
from hermes.workloads.outcomes import Outcome, summary

ORDERS: tuple[ToolOrder, ...] = ("fifo", "policy")
LAYOUTS = ("separate", "shared")
SANDBOX = "sandbox"
# The pools the shared layout merges into one.
SANDBOXED = ("docker", "env")


@dataclass(frozen=True, slots=True)
class ToolQueueSettings:
    engine: EngineSpec  # the LLM side: replicas enough that tools are the bottleneck
    window_s: float  # the applications arrive over this window
    tools: Sequence[ToolBackend]  # the sandboxed pools (SANDBOXED), cold starts and keep-alive
    instances: tuple[int, ...] = (1, 2, 4)
    policy: str = "gittins"
    seed: int = 0

    def __post_init__(self) -> None:
        names = sorted(t.name for t in self.tools)
        if names != sorted(SANDBOXED):
            raise ValueError(f"tools: expected the pools {', '.join(SANDBOXED)}, got {names}")
        if not self.instances or min(self.instances) < 1:
            raise ValueError(f"instances: expected counts >= 1, got {self.instances}")


def shared_runs(runs: Sequence[AppRun]) -> list[AppRun]:
    """`runs` with every sandboxed tool stage sent to the one `sandbox` pool."""
    return [
        replace(
            r,
            stages=tuple(
                replace(st, backend=SANDBOX)
                if st.kind == "tool" and st.backend in SANDBOXED
                else st
                for st in r.stages
            ),
        )
        for r in runs
    ]


def _pools(s: ToolQueueSettings, layout: str, n: int, order: ToolOrder) -> list[ToolBackend]:
    limited = [t.model_copy(update={"max_instances": n, "order": order}) for t in s.tools]
    if layout == "separate":
        return limited
    # One pool of containers: the slowest cold start and the longest keep-alive of the two.
    return [
        ToolBackend(
            name=SANDBOX,
            cold_start_s=max(t.cold_start_s for t in s.tools),
            keepalive_s=max(t.keepalive_s for t in s.tools),
            max_instances=n,
            order=order,
        )
    ]


def _run(
    s: ToolQueueSettings,
    schedule: Sequence[tuple[float, AppRun]],
    graphs: Mapping[str, PDGraph],
    tools: Sequence[ToolBackend],
) -> tuple[list[Outcome], dict[str, float]]:
    """Each application's outcome, and by pool the seconds calls waited for an instance and
    (under `calls:<pool>`) the calls it ran."""
    cfg = config_for(s.policy, s.engine, s.seed, tools=tools)
    sim = build(cfg, runs=schedule, graphs=graphs)
    sim.run(cfg.until)
    outcomes = [
        Outcome(
            a.run.app,
            None if a.finish_s is None or a.failed is not None else a.finish_s - a.arrival_s,
            a.run.deadline_s,
        )
        for a in sim.apps.values()
    ]
    waits = {t.name: sim.tools[t.name].pool.queue_wait_s for t in tools}
    waits.update({f"calls:{t.name}": float(sim.tools[t.name].pool.calls_started) for t in tools})
    return outcomes, waits


def _row(outcomes: list[Outcome], waits: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = dict(summary(outcomes))
    by_app: dict[str, list[float]] = {}
    for o in outcomes:
        if o.act_s is not None:
            by_app.setdefault(o.app, []).append(o.act_s)
    row["act_mean_by_app"] = {k: float(np.mean(v)) for k, v in sorted(by_app.items())}
    pools = sorted(k for k in waits[0] if not k.startswith("calls:"))
    row["queue_wait_s"] = {k: float(sum(w[k] for w in waits)) for k in pools}
    row["tool_calls"] = {k: int(sum(w[f"calls:{k}"] for w in waits)) for k in pools}
    return row


def tools_experiment(
    s: ToolQueueSettings,
    draws: Sequence[tuple[Sequence[AppRun], np.ndarray]],
    sweep: Sweep[Mapping[str, PDGraph]],
) -> dict[str, Any]:
    """ACT with FIFO and policy-ordered tool pools, per layout and instance count, over the
    pooled applications of every workload draw ((runs, unit arrival offsets) pairs); the
    simulations on `sweep`, whose shared data are the PDGraphs."""
    jobs: list[tuple[str, Callable[[Mapping[str, PDGraph]], Any]]] = []
    for layout in LAYOUTS:
        schedules = [
            spread_over(runs if layout == "separate" else shared_runs(runs), offsets, s.window_s)
            for runs, offsets in draws
        ]
        for n in s.instances:
            for order in ORDERS:
                pools = _pools(s, layout, n, order)
                jobs += [
                    (
                        f"tools: {layout} pools of {n}, {order} order, draw {i}",
                        partial(_run, s, schedule, tools=pools),
                    )
                    for i, schedule in enumerate(schedules)
                ]
    done = iter(sweep.run(jobs))  # in the order of the loops above
    sweep_rows: dict[str, dict[str, Any]] = {}
    for layout in LAYOUTS:
        cells: dict[str, Any] = {}
        for n in s.instances:
            cell: dict[str, Any] = {}
            for order in ORDERS:
                pooled: list[Outcome] = []
                waits: list[dict[str, float]] = []
                for _ in draws:
                    outcomes, wait = next(done)
                    pooled += outcomes
                    waits.append(wait)
                cell[order] = _row(pooled, waits)
            cell["reduction"] = reduction(cell["policy"]["act_mean"], cell["fifo"]["act_mean"])
            cells[str(n)] = cell
        sweep_rows[layout] = cells
    head = sweep_rows["shared"][str(min(s.instances))]
    return {
        "setting": {
            "layout": "shared",
            "instances": min(s.instances),
            "policy": s.policy,
            "replicas": s.engine.replicas,
            "max_num_seqs": s.engine.max_num_seqs,
            "window_s": s.window_s,
            "tools": [t.model_dump() for t in s.tools],
        },
        "fifo": head["fifo"],
        "policy": head["policy"],
        "reduction": head["reduction"],
        "sweep": sweep_rows,
    }
