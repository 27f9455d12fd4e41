"""Policies compared on recorded application runs instead of templates.

For each application type in the runs, the first `train_fraction` of its runs (in file order)
teach its PDGraph and the rest are the pool the workload is drawn from: `apps` applications,
their types drawn by weight (proportional to the replay pools unless given), each a run drawn
uniformly from its type's pool. Any application type works: nothing here knows the templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hermes.core.pdgraph import learn
from hermes.core.runs import AppRun
from hermes.experiments.admission_sweep import admission_targets, throughput_figures
from hermes.experiments.common import (
    BASE_WINDOW_S,
    EngineSpec,
    config_for,
    simulate_apps,
    spread_over,
    unit_arrivals,
)
from hermes.policies.registry import check_ranking
from hermes.workloads.mix import sample_mix
from hermes.workloads.outcomes import summary


@dataclass(frozen=True, slots=True)
class RecordedSettings:
    train_fraction: float = 0.5
    intensity: float = 3.0
    policies: tuple[str, ...] = ("vllm", "gittins", "oracle")
    seed: int = 0
    apps: int = 200
    weights: Mapping[str, float] | None = None
    engine: EngineSpec = field(default_factory=EngineSpec)

    def __post_init__(self) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"--train-fraction must be in (0, 1), got {self.train_fraction}")
        if not self.intensity > 0:
            raise ValueError(f"--intensity must be > 0, got {self.intensity}")
        if self.apps < 1:
            raise ValueError(f"--apps must be >= 1, got {self.apps}")
        for p in self.policies:
            try:
                check_ranking(p)
            except ValueError as e:
                raise ValueError(f"--policies: {e}") from None
        if not self.policies:
            raise ValueError("--policies: give at least one policy")


def split(
    runs: Sequence[AppRun], train_fraction: float
) -> dict[str, tuple[list[AppRun], list[AppRun]]]:
    """Per application type, in file order: (runs that teach, runs to replay)."""
    by_type: dict[str, list[AppRun]] = {}
    for r in runs:
        by_type.setdefault(r.app, []).append(r)
    out = {}
    for app, rs in by_type.items():
        n = int(len(rs) * train_fraction)
        out[app] = (rs[:n], rs[n:])
    return out


def _one_engine(run: AppRun) -> AppRun:
    # The bench serves every LLM stage on its one engine, whatever model the recording used.
    return replace(run, stages=tuple(replace(s, model=None) for s in run.stages))


def recorded_bench(runs: Sequence[AppRun], s: RecordedSettings) -> dict[str, Any]:
    """Each policy's ACT summary (and deadline satisfaction where runs carry deadlines)."""
    if not runs:
        raise ValueError("the run files hold no runs")
    parts = split(runs, s.train_fraction)
    pools = {app: replay for app, (_, replay) in parts.items() if replay}
    if s.weights is not None:
        unknown = sorted(set(s.weights) - set(pools))
        if unknown:
            raise ValueError(
                f"--weights: no runs to replay for application {unknown[0]!r} "
                f"(types with runs to replay: {', '.join(sorted(pools)) or 'none'})"
            )
        weights = dict(s.weights)
    else:
        weights = {app: float(len(pool)) for app, pool in sorted(pools.items())}
    if not weights:
        raise ValueError("no application type has runs left to replay after the training split")
    graphs = learn(_one_engine(r) for train, _ in parts.values() for r in train)
    rng = np.random.default_rng([s.seed, 2])
    names = sample_mix(weights, s.apps, rng)
    picks = [pools[a][int(rng.integers(len(pools[a])))] for a in names]
    workload = [_one_engine(r) for r in picks]
    schedule = spread_over(workload, unit_arrivals(s.apps, rng), BASE_WINDOW_S / s.intensity)
    results: dict[str, Any] = {}
    for policy in s.policies:
        outcomes, res = simulate_apps(config_for(policy, s.engine, s.seed), schedule, graphs)
        row = summary(outcomes)
        results[policy] = {
            k: row[k] for k in ("apps", "act_mean", "act_p50", "act_p95", "act_p99", "dsr")
        }
        results[policy]["failed"] = row["failed"]
        results[policy] |= throughput_figures([res])
    return {
        "policies": results,
        "targets": admission_targets(results, f"intensity {s.intensity:g}", s.intensity),
        "config": {
            "train_fraction": s.train_fraction,
            "intensity": s.intensity,
            "window_s": BASE_WINDOW_S / s.intensity,
            "policies": list(s.policies),
            "seed": s.seed,
            "apps": s.apps,
            "weights": weights,
            "engine": {
                "model": s.engine.model,
                "gpu": s.engine.gpu,
                "replicas": s.engine.replicas,
                "max_num_seqs": s.engine.max_num_seqs,
            },
            "runs": {
                app: {"train": len(train), "replay": len(replay)}
                for app, (train, replay) in sorted(parts.items())
            },
            "learned": sorted(graphs),
        },
    }
