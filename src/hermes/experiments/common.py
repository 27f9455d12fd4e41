"""What every experiment shares: a workload of application runs, PDGraphs learned apart from
it, one simulation per policy, and per-application outcomes summarised the same way.

Experiments replay one fixed set of runs under each policy, so that differences between
policies come from scheduling alone; arrival times are one unit-rate Poisson sequence scaled to
each load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.sim.build import build, template_runs
from hermes.sim.config import (
    AppWorkload,
    InstanceGroup,
    PolicyOptions,
    SimConfig,
    ToolBackend,
)
from hermes.workloads.arrivals import compress_to_window, poisson_arrivals
from hermes.workloads.outcomes import Outcome

# The application mix of the Hermes paper's experiments.
PAPER_MIX: dict[str, float] = {
    "factool_code": 16,
    "factool_kbqa": 16,
    "react_alfw": 16,
    "langchain_mapreduce": 16,
    "factool_math": 4,
    "react_fever": 4,
}
# Intensity 1.0 spreads the applications over this window; intensity k over window / k.
BASE_WINDOW_S = 1800.0
# Far enough apart that no application of the mix overlaps the next: standalone times.
STANDALONE_GAP_S = 3600.0


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What serves an experiment: one model on one GPU type, `replicas` engines of
    `max_num_seqs` each (a description; `config_for` turns it into instances)."""

    model: str = "llama-2-7b"
    gpu: str = "a100"
    replicas: int = 1
    max_num_seqs: int = 256


def template_workload(
    mix: Mapping[str, float], count: int, seed: int
) -> tuple[list[AppRun], np.ndarray]:
    """`count` template runs drawn from `mix`, and unit-window Poisson arrival offsets (in
    [0, 1]; multiply by the window)."""
    rng = np.random.default_rng([seed, 1])
    return template_runs(mix, count, rng, seed), unit_arrivals(count, rng)


def unit_arrivals(count: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrival times squeezed into [0, 1]."""
    t = poisson_arrivals(1.0, count, rng)
    return compress_to_window(t - t[0], 1.0) if count else t


def spread_over(
    runs: Sequence[AppRun], offsets: np.ndarray, window_s: float
) -> list[tuple[float, AppRun]]:
    """(arrival time, run) pairs: unit offsets stretched over `window_s` seconds."""
    return [(float(t) * window_s, r) for t, r in zip(offsets.tolist(), runs, strict=True)]


def standalone_schedule(runs: Sequence[AppRun]) -> list[tuple[float, AppRun]]:
    return [(i * STANDALONE_GAP_S, r) for i, r in enumerate(runs)]


def config_for(
    policy: str,
    spec: EngineSpec,
    seed: int,
    *,
    options: PolicyOptions | None = None,
    tools: Sequence[ToolBackend] = (),
) -> SimConfig:
    return SimConfig(
        seed=seed,
        policy=policy,
        policy_options=options or PolicyOptions(),
        instances=[
            InstanceGroup(
                model=spec.model,
                gpu=spec.gpu,
                count=spec.replicas,
                max_num_seqs=spec.max_num_seqs,
            )
        ],
        tools=list(tools),
        # The workload is passed in; this only satisfies "a config has a workload".
        apps=AppWorkload(templates={"factool_code": 1}, count=1),
    )


def simulate_apps(
    config: SimConfig,
    schedule: Sequence[tuple[float, AppRun]],
    graphs: Mapping[str, PDGraph],
) -> tuple[list[Outcome], dict[str, object]]:
    """Run `schedule` under `config`; each application's outcome and the simulation's results."""
    sim = build(config, runs=schedule, graphs=graphs)
    sim.run(config.until)
    outcomes = []
    for a in sim.apps.values():
        act = None if a.finish_s is None or a.failed is not None else a.finish_s - a.arrival_s
        cold = float(getattr(a, "cold_wait_s", 0.0))
        outcomes.append(Outcome(a.run.app, act, a.run.deadline_s, cold))
    return outcomes, sim.results()


def standalone_times(
    runs: Sequence[AppRun], spec: EngineSpec, graphs: Mapping[str, PDGraph], seed: int
) -> list[float]:
    """Each run's completion time with the engine to itself (FCFS, warm backends)."""
    outcomes, _ = simulate_apps(config_for("vllm", spec, seed), standalone_schedule(runs), graphs)
    times = []
    for i, o in enumerate(outcomes):
        if o.act_s is None:
            raise ValueError(f"run {runs[i].run_id!r} cannot complete on its own on this engine")
        if o.act_s >= STANDALONE_GAP_S:
            raise ValueError(f"run {runs[i].run_id!r} takes longer than the standalone gap")
        times.append(o.act_s)
    return times


def with_deadlines(
    runs: Sequence[AppRun], standalone: Sequence[float], factor: float
) -> list[AppRun]:
    """Each run with a deadline of `factor` times its standalone completion time."""
    return [replace(r, deadline_s=factor * s) for r, s in zip(runs, standalone, strict=True)]


def reduction(new: float | None, base: float | None) -> float | None:
    """Relative change of `new` against `base` (−0.7: 70 % lower)."""
    if new is None or base is None or base == 0:
        return None
    return new / base - 1.0
