"""Admission at vLLM's defaults (issue 15): the adaptive limit beside a sweep of fixed limits.

On one engine at vLLM's defaults (256 sequences, prefix caching on), at every intensity:
`vllm` (first come first served, what a user runs today), `gittins` (no admission: the engine
takes what vLLM would, ordered by rank), `gittins+N` for each fixed limit N (at most N calls in
the engine, the rest waiting in rank order) and `gittins+auto` (the controller of
`policies.admission`). Each row carries the completion-time summary over the pooled workload
draws, the makespan (first arrival to last completion) and the output tokens per second, so
that a cut in completion time bought with lost throughput shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from hermes.core.pdgraph import PDGraph
from hermes.experiments.common import config_for, reduction, simulate_apps
from hermes.experiments.parallel import Sweep
from hermes.workloads.outcomes import Outcome, summary

if TYPE_CHECKING:
    from hermes.experiments.hermes_paper import PaperSettings, _Workload

Graphs = Mapping[str, PDGraph]
# vLLM's default max_num_seqs: the engine a user runs.
VLLM_DEFAULT_SEQS = 256


def throughput_figures(results: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Mean makespan and output tokens per second over simulations' results."""
    spans = [float(r["makespan_s"]) for r in results if r.get("makespan_s") is not None]
    rates = [
        float(r["output_tokens_per_s"]) for r in results if r.get("output_tokens_per_s") is not None
    ]
    return {
        "makespan_s": float(np.mean(spans)) if spans else None,
        "output_tokens_per_s": float(np.mean(rates)) if rates else None,
    }


def mean_limit(results: Sequence[Mapping[str, Any]]) -> float | None:
    """The time-weighted mean admission limit, averaged over simulations (None: none)."""
    limits = [
        float(inst["admission"]["mean_limit"])
        for r in results
        for inst in r.get("instances", [])
        if inst.get("admission", {}).get("mean_limit") is not None
    ]
    return float(np.mean(limits)) if limits else None


def target(name: str, value: float | None, op: str, bound: float) -> dict[str, Any]:
    """A target: `value op bound`, unknown (None) when nothing was measured."""
    met = None if value is None else value <= bound if op == "<=" else value >= bound
    return {"target": name, "measured": value, "goal": f"{op} {bound:g}", "met": met}


def admission_targets(
    rows: Mapping[str, Mapping[str, Any]],
    where: str,
    intensity: float,
    policy: str = "gittins+auto",
) -> list[dict[str, Any]]:
    """The issue's targets for `policy` against `vllm` in `rows`: at intensity 1, no more than
    2 % worse on mean completion time; at higher loads, mean and P95 cut by half with the
    makespan no more than 3 % longer."""
    if "vllm" not in rows or policy not in rows:
        return []
    p, v = rows[policy], rows["vllm"]
    name = f"{policy} vs vllm at its defaults"
    if intensity <= 1.0:
        d = reduction(p["act_mean"], v["act_mean"])
        return [target(f"{name}, mean ACT, no harm ({where})", d, "<=", 0.02)]
    return [
        target(f"{name}, mean ACT ({where})", reduction(p["act_mean"], v["act_mean"]), "<=", -0.5),
        target(f"{name}, P95 ACT ({where})", reduction(p["act_p95"], v["act_p95"]), "<=", -0.5),
        target(
            f"{name}, makespan ({where})",
            reduction(p.get("makespan_s"), v.get("makespan_s")),
            "<=",
            0.03,
        ),
    ]


def sweep_policies(limits: Sequence[int]) -> list[str]:
    return ["vllm", "gittins", *(f"gittins+{n}" for n in limits), "gittins+auto"]


def admission_experiment(s: PaperSettings, w: _Workload, sweep: Sweep[Graphs]) -> dict[str, Any]:
    """Every policy of `sweep_policies` at every intensity, pooled over the workload draws."""
    spec = s.engine_spec(VLLM_DEFAULT_SEQS)
    policies = sweep_policies(s.admission_limits)
    jobs: list[tuple[str, Callable[[Graphs], Any]]] = [
        (
            f"admission: intensity {k}, {policy}, draw {i}",
            partial(simulate_apps, config_for(policy, spec, s.seed), d.at(k)),
        )
        for k in s.intensities
        for policy in policies
        for i, d in enumerate(w.draws)
    ]
    done = iter(sweep.run(jobs))
    by_intensity: dict[str, dict[str, Any]] = {}
    for k in s.intensities:
        rows: dict[str, Any] = {}
        for policy in policies:
            pooled: list[Outcome] = []
            results = []
            for _ in w.draws:
                outcomes, res = next(done)
                pooled += outcomes
                results.append(res)
            rows[policy] = summary(pooled) | throughput_figures(results)
            rows[policy]["mean_limit"] = mean_limit(results)
        # No admission is a fixed limit too: the engine's own max_num_seqs.
        fixed = {n: rows[f"gittins+{n}"]["act_mean"] for n in s.admission_limits}
        fixed[VLLM_DEFAULT_SEQS] = rows["gittins"]["act_mean"]
        fixed = {n: m for n, m in fixed.items() if m is not None}
        best = min(fixed, key=lambda n: fixed[n]) if fixed else None
        rows["_best_fixed"] = {
            "limit": best,
            "act_mean": None if best is None else fixed[best],
            "auto_vs_best": None
            if best is None
            else reduction(rows["gittins+auto"]["act_mean"], fixed[best]),
        }
        by_intensity[str(k)] = rows
    return {
        "max_num_seqs": VLLM_DEFAULT_SEQS,
        "limits": list(s.admission_limits),
        "by_intensity": by_intensity,
    }


def sweep_targets(r: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """gittins+auto within 10 % of the best fixed limit's mean ACT, at every intensity."""
    if r is None:
        return []
    out = []
    for k, rows in r["by_intensity"].items():
        best = rows["_best_fixed"]
        name = (
            f"gittins+auto vs the best fixed limit ({best['limit']}), mean ACT "
            f"(max_num_seqs {r['max_num_seqs']}, intensity {k})"
        )
        out.append(target(name, best["auto_vs_best"], "<=", 0.10))
    return out
