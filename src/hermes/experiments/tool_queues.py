"""The `tools` experiment: tool pools with limited instances, their waiting calls granted first
come first served (`fifo`) or by their applications' rank (`policy`, the LLM queue's order),
under gittins.

The LLM side is made roomy (several replicas) so that the tool pools, not the engine, are where
calls wait. Two layouts of the mix's sandboxed tools: `separate` (code execution in `docker`
sandboxes, ALFWorld in `env` instances, each pool of n instances) and `shared` (one pool of n
`sandbox` containers runs both, as a platform that sandboxes every tool would). Web search is
a hosted API: unlimited, it never queues. The headline is the shared pool at the fewest
instances, where the order has the most to decide.

Beside the two orders, each cell has two references that say how much any order could give:
`oracle` grants the pools' waiting calls by the applications' true remaining demand (LLM and
tool seconds, read from the runs' futures: clairvoyant, the LLM queue still under the policy),
and `unlimited` runs the same pools without an instance limit (nothing queues; a call that
finds every instance busy starts one and waits for its warm-up). Each row also says how long
applications of each type waited for a tool slot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from hermes.cluster.tool_pool import ToolOrder
from hermes.core.demand_cost import LinearCost
from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.experiments.common import EngineSpec, config_for, reduction, spread_over
from hermes.experiments.parallel import Sweep
from hermes.policies.base import PolicyContext
from hermes.policies.oracle import Oracle
from hermes.sim.app_state import ToolCallId
from hermes.sim.build import build
from hermes.sim.config import ToolBackend
from hermes.sim.simulation import Simulation
from hermes.workloads.outcomes import Outcome, summary

ORDERS: tuple[ToolOrder, ...] = ("fifo", "policy")
# The references beside the two orders (see the module's docstring).
ORACLE, UNLIMITED = "oracle", "unlimited"
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


def _pools(s: ToolQueueSettings, layout: str, n: int | None, order: ToolOrder) -> list[ToolBackend]:
    """The layout's limited pools of `n` instances each (None: unlimited) in `order`."""
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


def order_by_oracle(sim: Simulation) -> None:
    """Grant every limited pool's waiting calls by the true remaining demand of their
    applications, LLM and tool seconds alike (the LLM queue keeps its policy)."""
    cost = sim.cost
    weighted = (
        replace(cost, tool_weight=1.0)
        if isinstance(cost, EngineDemandCost)
        else LinearCost(tool_weight=1.0)
    )
    oracle = Oracle(PolicyContext(cost=weighted))
    for runner in sim.tools.values():
        runner.order_by(oracle)


def _run(
    s: ToolQueueSettings,
    schedule: Sequence[tuple[float, AppRun]],
    graphs: Mapping[str, PDGraph],
    tools: Sequence[ToolBackend],
    oracle: bool = False,
) -> tuple[list[Outcome], dict[str, Any]]:
    """Each application's outcome, and the pools' figures: by pool the seconds calls waited
    for an instance (`wait`) and the calls it ran (`calls`); by application (in the order of
    the outcomes) the seconds it waited for tool slots (`app_wait`) and for an engine to take
    its LLM calls (`llm_wait`)."""
    cfg = config_for(s.policy, s.engine, s.seed, tools=tools)
    sim = build(cfg, runs=schedule, graphs=graphs)
    if oracle:
        order_by_oracle(sim)
    sim.run(cfg.until)
    outcomes = [
        Outcome(
            a.run.app,
            None if a.finish_s is None or a.failed is not None else a.finish_s - a.arrival_s,
            a.run.deadline_s,
        )
        for a in sim.apps.values()
    ]
    # The layout's pools (limited, or the same pools unlimited), not the hosted search API.
    users = [_uses(a.run, [t.name for t in tools]) for a in sim.apps.values()]
    app_wait = [0.0] * len(outcomes)
    index = {app_id: i for i, app_id in enumerate(sim.apps)}
    for t in tools:
        for call, waited in sim.tools[t.name].queue_waits.items():
            assert isinstance(call, ToolCallId)
            app_wait[index[call.app_id]] += waited
    # Whether an application granted a tool slot then waits for the LLM instead.
    llm_wait = [0.0] * len(outcomes)
    for req in sim.requests:
        rid = req.id
        if isinstance(rid, tuple) and rid[0] == "app" and req.first_scheduled_s is not None:
            llm_wait[index[rid[1]]] += req.first_scheduled_s - req.arrival_s
    return outcomes, {
        "wait": {t.name: sim.tools[t.name].pool.queue_wait_s for t in tools},
        "calls": {t.name: sim.tools[t.name].pool.calls_started for t in tools},
        # Instances started (each warmed up): with no limit, about the peak demand.
        "launched": {t.name: sim.tools[t.name].pool.cold_starts for t in tools},
        "app_wait": app_wait,
        "llm_wait": llm_wait,
        "users": users,  # whether each application has a stage on one of `tools`' pools
    }


def _uses(run: AppRun, pools: Sequence[str]) -> bool:
    return any(st.kind == "tool" and st.backend in pools for st in run.stages)


def _row(outcomes: list[Outcome], figures: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of the pooled draws; by application type the ACT, the seconds waited for
    tool slots and for the LLM (an engine's queue, summed over the calls); the mean ACT of
    the applications with a stage on the layout's pools (`act_mean_pool_users`)."""
    row: dict[str, Any] = dict(summary(outcomes))
    by_app: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    users: list[float] = []
    pools = sorted(figures[0]["wait"])
    llm_waits: dict[str, list[float]] = {}
    app_wait = [w for f in figures for w in f["app_wait"]]
    llm_wait = [w for f in figures for w in f["llm_wait"]]
    uses = [u for f in figures for u in f["users"]]
    for o, w, lw, user in zip(outcomes, app_wait, llm_wait, uses, strict=True):
        waits.setdefault(o.app, []).append(w)
        llm_waits.setdefault(o.app, []).append(lw)
        if o.act_s is not None:
            by_app.setdefault(o.app, []).append(o.act_s)
            if user:
                users.append(o.act_s)
    row["act_mean_by_app"] = {k: float(np.mean(v)) for k, v in sorted(by_app.items())}
    row["tool_wait_s_by_app"] = {k: float(np.mean(v)) for k, v in sorted(waits.items())}
    row["llm_wait_s_by_app"] = {k: float(np.mean(v)) for k, v in sorted(llm_waits.items())}
    row["act_mean_pool_users"] = float(np.mean(users)) if users else None
    row["queue_wait_s"] = {k: float(sum(f["wait"][k] for f in figures)) for k in pools}
    row["tool_calls"] = {k: int(sum(f["calls"][k] for f in figures)) for k in pools}
    row["instances_launched"] = {k: [int(f["launched"][k]) for f in figures] for k in pools}
    return row


Job = tuple[str, Callable[[Mapping[str, PDGraph]], Any]]


def _jobs(s: ToolQueueSettings, draws: Sequence[tuple[Sequence[AppRun], np.ndarray]]) -> list[Job]:
    """Every simulation, in the order `_cells` reads them: per layout, for each instance count
    the orders and the oracle, then the unlimited pools; each over every draw."""
    jobs: list[Job] = []
    for layout in LAYOUTS:
        schedules = [
            spread_over(runs if layout == "separate" else shared_runs(runs), offsets, s.window_s)
            for runs, offsets in draws
        ]
        variants: list[tuple[str, list[ToolBackend], bool]] = []
        for n in s.instances:
            variants += [
                (f"pools of {n}, {o} order", _pools(s, layout, n, o), False) for o in ORDERS
            ]
            variants.append((f"pools of {n}, oracle order", _pools(s, layout, n, "policy"), True))
        variants.append(("unlimited pools", _pools(s, layout, None, "fifo"), False))
        for label, pools, oracle in variants:
            jobs += [
                (
                    f"tools: {layout} {label}, draw {i}",
                    partial(_run, s, schedule, tools=pools, oracle=oracle),
                )
                for i, schedule in enumerate(schedules)
            ]
    return jobs


def _cells(s: ToolQueueSettings, draws: int, done: Iterator[Any]) -> dict[str, Any]:
    """The rows of `_jobs`' results, by layout and instance count."""

    def pooled() -> dict[str, Any]:
        outcomes: list[Outcome] = []
        figures: list[dict[str, Any]] = []
        for _ in range(draws):
            o, f = next(done)
            outcomes += o
            figures.append(f)
        return _row(outcomes, figures)

    rows: dict[str, Any] = {}
    for layout in LAYOUTS:
        cells: dict[str, Any] = {
            str(n): {k: pooled() for k in (*ORDERS, ORACLE)} for n in s.instances
        }
        free = pooled()
        for cell in cells.values():
            fifo = cell["fifo"]["act_mean"]
            cell[UNLIMITED] = free
            for k in ("policy", ORACLE, UNLIMITED):
                cell[f"reduction_{k}" if k != "policy" else "reduction"] = reduction(
                    cell[k]["act_mean"], fifo
                )
            cell["reduction_pool_users"] = reduction(
                cell["policy"]["act_mean_pool_users"], cell["fifo"]["act_mean_pool_users"]
            )
        rows[layout] = cells
    return rows


def tools_experiment(
    s: ToolQueueSettings,
    draws: Sequence[tuple[Sequence[AppRun], np.ndarray]],
    sweep: Sweep[Mapping[str, PDGraph]],
) -> dict[str, Any]:
    """ACT with FIFO and policy-ordered tool pools, per layout and instance count, over the
    pooled applications of every workload draw ((runs, unit arrival offsets) pairs), with the
    oracle order and unlimited pools beside them; the simulations on `sweep`, whose shared
    data are the PDGraphs."""
    sweep_rows = _cells(s, len(draws), iter(sweep.run(_jobs(s, draws))))
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
        **{k: head[k] for k in (*ORDERS, ORACLE, UNLIMITED)},
        **{k: v for k, v in head.items() if k.startswith("reduction")},
        "sweep": sweep_rows,
    }
