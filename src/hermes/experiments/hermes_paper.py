"""The Hermes paper's experiments on the simulator: completion time by policy and load,
deadlines, prewarming, ablations, the cost of a ranking round, and tool pools in policy order.

Each experiment is a function from settings to plain data (JSON-ready), registered by name in
`EXPERIMENTS`; `run_all` runs those the settings name, in turn, and checks the issue's targets
against what was measured. Nothing here writes files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.experiments.admission_sweep import (
    VLLM_DEFAULT_SEQS,
    admission_experiment,
    admission_targets,
    sweep_targets,
    throughput_figures,
)
from hermes.experiments.common import (
    BASE_WINDOW_S,
    PAPER_MIX,
    EngineSpec,
    config_for,
    reduction,
    simulate_apps,
    spread_over,
    standalone_times,
    template_workload,
    with_deadlines,
)
from hermes.experiments.kv_retention import kv_experiment
from hermes.experiments.parallel import Sweep
from hermes.experiments.ranking_overhead import ranking_round_times
from hermes.experiments.tool_queues import ToolQueueSettings, tools_experiment
from hermes.sim.build import template_graphs
from hermes.sim.config import PolicyOptions, ToolBackend
from hermes.types import ProgressLog
from hermes.workloads.outcomes import Outcome, summary

# What every simulation of a study shares: the PDGraphs (sent to each worker once).
Graphs = Mapping[str, PDGraph]
# `+auto`: the admission controller in front of the engine (issue 15), the rest queued by rank.
LOAD_POLICIES = (
    "vllm",
    "parrot",
    "vtc",
    "plas",
    "srjf-mean",
    "gittins",
    "gittins+auto",
    "lstf+auto",
    "oracle",
)
PREWARM_POLICIES = ("none", "keepalive", "on-queue", "pdgraph")
# Cold backends of the mix: code sandboxes start in seconds, ALFWorld environments in about
# one; web search is a hosted API and always warm.
PAPER_TOOLS = (
    ToolBackend(name="docker", cold_start_s=2.0, keepalive_s=60.0),
    ToolBackend(name="env", cold_start_s=1.0, keepalive_s=60.0),
)


@dataclass(frozen=True, slots=True)
class PaperSettings:
    mix: Mapping[str, float] = field(default_factory=lambda: dict(PAPER_MIX))
    apps: int = 200
    intensities: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0)
    headline_intensity: float = 3.0
    policies: tuple[str, ...] = LOAD_POLICIES
    # max_num_seqs of the engine: vLLM's default, and a batch-limited engine where a queue
    # forms and the order of service decides completion times.
    batch_limits: tuple[int, ...] = (256, 8)
    model: str = "llama-2-7b"
    gpu: str = "a100"
    seed: int = 0
    # The load sweep pools this many workloads (seed, seed + 1, ...): one draw of 200
    # applications near saturation swings mean completion times by a factor of two.
    workloads: int = 3
    training_runs: int = 300
    deadline_factors: tuple[float, ...] = (1.2, 1.5, 2.0)
    prewarm_policies: tuple[str, ...] = PREWARM_POLICIES
    prewarm_k: float = 0.5
    keepalive_ttls_s: tuple[float, ...] = (
        0.25,
        0.5,
        1.0,
        2.0,
        5.0,
        10.0,
        20.0,
        30.0,
        60.0,
        120.0,
        300.0,
    )
    overhead_apps: tuple[int, ...] = (1, 10, 100, 1000, 10_000)
    # Which experiments to run (names of EXPERIMENTS); all of them by default.
    experiments: tuple[str, ...] = (
        "load",
        "deadlines",
        "prewarm",
        "ablation",
        "overhead",
        "tools",
        "kv",
        "admission",
    )
    # tools: LLM replicas (enough that tool pools are the bottleneck), the load, and the
    # instance counts of the limited pools.
    tools_replicas: int = 4
    tools_intensity: float = 30.0
    tools_instances: tuple[int, ...] = (1, 2, 4)
    # admission: the fixed limits swept beside gittins+auto at vLLM's defaults.
    admission_limits: tuple[int, ...] = (4, 8, 16, 32, 64, 128)

    def __post_init__(self) -> None:
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown or not self.experiments:
            raise ValueError(
                f"experiments: expected some of {', '.join(EXPERIMENTS)}, got "
                f"{', '.join(self.experiments) or 'none'}"
            )

    def engine_spec(self, max_num_seqs: int) -> EngineSpec:
        return EngineSpec(self.model, self.gpu, 1, max_num_seqs)


@dataclass(slots=True)
class _Draw:
    runs: list[AppRun]
    offsets: np.ndarray

    def at(self, intensity: float) -> list[tuple[float, AppRun]]:
        return spread_over(self.runs, self.offsets, BASE_WINDOW_S / intensity)


@dataclass(slots=True)
class _Workload:
    draws: list[_Draw]  # the first is the one every experiment but the load sweep uses
    graphs: dict[str, PDGraph]

    @property
    def runs(self) -> list[AppRun]:
        return self.draws[0].runs

    @property
    def offsets(self) -> np.ndarray:
        return self.draws[0].offsets

    def at(self, intensity: float) -> list[tuple[float, AppRun]]:
        return self.draws[0].at(intensity)


def _workload(s: PaperSettings) -> _Workload:
    draws = [_Draw(*template_workload(s.mix, s.apps, s.seed + i)) for i in range(s.workloads)]
    return _Workload(draws, template_graphs(list(s.mix), s.training_runs, s.seed))


def _quiet(_: str) -> None:
    return None


def load_experiment(s: PaperSettings, w: _Workload, sweep: Sweep[Graphs]) -> dict[str, Any]:
    """ACT of every policy at every intensity, for each batch limit, over the pooled
    applications of every workload draw; the standalone ACT (the floor no order of service
    can beat), per-draw means, and the sorted ACTs at the headline intensity."""
    jobs: list[tuple[str, Callable[[Graphs], Any]]] = []
    for seqs in s.batch_limits:
        spec = s.engine_spec(seqs)
        jobs += [
            (
                f"standalone: max_num_seqs {seqs}, draw {i}",
                partial(standalone_times, d.runs, spec, seed=s.seed),
            )
            for i, d in enumerate(w.draws)
        ]
        for k in s.intensities:
            for policy in s.policies:
                cfg = config_for(policy, spec, s.seed)
                jobs += [
                    (
                        f"load: max_num_seqs {seqs}, intensity {k}, {policy}, draw {i}",
                        partial(simulate_apps, cfg, d.at(k)),
                    )
                    for i, d in enumerate(w.draws)
                ]
    done = iter(sweep.run(jobs))  # in the order of the loops above
    out: dict[str, Any] = {}
    for seqs in s.batch_limits:
        alone = float(np.mean([t for _ in w.draws for t in next(done)]))
        by_intensity: dict[str, dict[str, Any]] = {}
        cdf: dict[str, list[float]] = {}
        per_draw: dict[str, list[float | None]] = {}
        for k in s.intensities:
            rows: dict[str, Any] = {}
            for policy in s.policies:
                pooled: list[Outcome] = []
                means: list[float | None] = []
                ress: list[dict[str, Any]] = []
                for _ in w.draws:
                    outcomes, res = next(done)
                    pooled += outcomes
                    means.append(summary(outcomes)["act_mean"])
                    ress.append(res)
                rows[policy] = summary(pooled) | throughput_figures(ress)
                busy = [float(res["instances"][0]["utilisation"]) for res in ress]
                rows[policy]["utilisation"] = float(np.mean(busy))
                if k == s.headline_intensity:
                    acts = [round(o.act_s, 3) for o in pooled if o.act_s is not None]
                    cdf[policy] = sorted(acts)
                    per_draw[policy] = means
            base = rows.get("vllm", {}).get("act_mean")
            rows["_floor"] = {
                "standalone_act_mean": alone,
                # The best any order of service could do against vllm: every app alone.
                "max_reduction_vs_vllm": reduction(alone, base),
            }
            by_intensity[str(k)] = rows
        out[str(seqs)] = {
            "standalone_act_mean": alone,
            "by_intensity": by_intensity,
            "cdf": cdf,
            "act_mean_by_draw": per_draw,
        }
    return out


def deadline_experiment(s: PaperSettings, w: _Workload, sweep: Sweep[Graphs]) -> dict[str, Any]:
    """Deadline satisfaction of edf and lstf with deadlines at multiples of each application's
    standalone completion time, at the headline intensity."""
    policies = ("vllm", "edf", "lstf")
    # Deadlines are multiples of the standalone times: those first, for every batch limit.
    alones = sweep.run(
        [
            (
                f"deadlines: standalone, max_num_seqs {seqs}",
                partial(standalone_times, w.runs, s.engine_spec(seqs), seed=s.seed),
            )
            for seqs in s.batch_limits
        ]
    )
    jobs: list[tuple[str, Callable[[Graphs], Any]]] = []
    for seqs, alone in zip(s.batch_limits, alones, strict=True):
        spec = s.engine_spec(seqs)
        for factor in s.deadline_factors:
            runs = with_deadlines(w.runs, alone, factor)
            schedule = spread_over(runs, w.offsets, BASE_WINDOW_S / s.headline_intensity)
            jobs += [
                (
                    f"deadlines: max_num_seqs {seqs}, {factor}x, {policy}",
                    partial(simulate_apps, config_for(policy, spec, s.seed), schedule),
                )
                for policy in policies
            ]
    done = iter(sweep.run(jobs))
    return {
        str(seqs): {
            str(factor): {policy: summary(next(done)[0]) for policy in policies}
            for factor in s.deadline_factors
        }
        for seqs in s.batch_limits
    }


def _prewarm_row(outcomes: list[Outcome], res: Mapping[str, Any]) -> dict[str, Any]:
    total = res["tools_total"]
    row = summary(outcomes)
    row["cold_wait_s"] = float(sum(o.cold_wait_s for o in outcomes))
    row["warm_instance_s"] = float(total["warm_instance_s"])
    row["cold_starts"] = int(total["cold_starts"])
    return row


def prewarm_experiment(s: PaperSettings, w: _Workload, sweep: Sweep[Graphs]) -> dict[str, Any]:
    """Critical-path cold-start wait and warm backend-seconds of each prewarm policy, and of
    the keep-alive TTLs, under gittins at the headline intensity and the first batch limit."""
    spec = s.engine_spec(s.batch_limits[0])
    schedule = w.at(s.headline_intensity)

    def job(label: str, prewarm: str, tools: Sequence[ToolBackend]) -> tuple[str, Any]:
        options = PolicyOptions(prewarm=prewarm, prewarm_k=s.prewarm_k)
        cfg = config_for("gittins", spec, s.seed, options=options, tools=tools)
        return label, partial(simulate_apps, cfg, schedule)

    jobs = [job(f"prewarm: {name}", name, PAPER_TOOLS) for name in s.prewarm_policies]
    for ttl in s.keepalive_ttls_s:
        tools = [t.model_copy(update={"keepalive_s": ttl}) for t in PAPER_TOOLS]
        jobs.append(job(f"prewarm: keepalive TTL {ttl} s", "keepalive", tools))
    rows = [_prewarm_row(*r) for r in sweep.run(jobs)]
    n = len(s.prewarm_policies)
    return {
        "tools": [t.model_dump() for t in PAPER_TOOLS],
        "policies": dict(zip(s.prewarm_policies, rows[:n], strict=True)),
        "keepalive_ttl": {str(t): r for t, r in zip(s.keepalive_ttls_s, rows[n:], strict=True)},
    }


def ablation_experiment(s: PaperSettings, w: _Workload, sweep: Sweep[Graphs]) -> dict[str, Any]:
    """gittins and srjf-mean with and without online refinement, against oracle."""
    schedule = w.at(s.headline_intensity)
    variants = [
        ("gittins", True),
        ("gittins", False),
        ("srjf-mean", True),
        ("srjf-mean", False),
        ("oracle", True),
    ]
    names = [
        p if p == "oracle" else f"{p}{'' if refine else ' (no refine)'}" for p, refine in variants
    ]
    jobs: list[tuple[str, Callable[[Graphs], Any]]] = []
    for seqs in s.batch_limits:
        spec = s.engine_spec(seqs)
        for name, (policy, refine) in zip(names, variants, strict=True):
            cfg = config_for(policy, spec, s.seed, options=PolicyOptions(refine=refine))
            jobs.append(
                (f"ablation: max_num_seqs {seqs}, {name}", partial(simulate_apps, cfg, schedule))
            )
    done = iter(sweep.run(jobs))
    return {str(seqs): {name: summary(next(done)[0]) for name in names} for seqs in s.batch_limits}


def overhead_experiment(s: PaperSettings, w: _Workload, sweep: Sweep[Graphs]) -> Any:
    # Timed here, between sweeps, with the workers idle: a round's wall time is the figure.
    sweep.progress("ranking-round overhead")
    return ranking_round_times(w.graphs, s.overhead_apps, s.seed)


def tool_experiment(s: PaperSettings, w: _Workload, sweep: Sweep[Graphs]) -> dict[str, Any]:
    """FIFO against policy-ordered tool pools under gittins (`experiments.tool_queues`)."""
    spec = replace(s.engine_spec(s.batch_limits[0]), replicas=s.tools_replicas)
    settings = ToolQueueSettings(
        spec, BASE_WINDOW_S / s.tools_intensity, PAPER_TOOLS, s.tools_instances, seed=s.seed
    )
    draws = [(d.runs, d.offsets) for d in w.draws]
    return tools_experiment(settings, draws, sweep)


Experiment = Callable[[PaperSettings, _Workload, Sweep[Graphs]], Any]
EXPERIMENTS: dict[str, Experiment] = {
    "load": load_experiment,
    "deadlines": deadline_experiment,
    "prewarm": prewarm_experiment,
    "ablation": ablation_experiment,
    "overhead": overhead_experiment,
    "tools": tool_experiment,
    "kv": lambda s, w, sweep: kv_experiment(s.seed, sweep.progress, sweep),
    "admission": admission_experiment,
}


def run_all(
    s: PaperSettings,
    progress: ProgressLog = _quiet,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """The experiments `s.experiments` names, in the order of EXPERIMENTS, their simulations
    on `workers` processes (`experiments.parallel`; the results do not depend on how many)."""
    start = time.perf_counter()
    w = _workload(s)
    results: dict[str, Any] = {"settings": _settings_dict(s)}
    graphs: Graphs = w.graphs
    with Sweep(workers, ray_address, graphs, progress) as sweep:
        chosen = {n: partial(e, s, w, sweep) for n, e in EXPERIMENTS.items() if n in s.experiments}
        results.update(sweep.studies(chosen, alone=("overhead",)))
    results["targets"] = check_targets(s, results)
    results["wall_s"] = time.perf_counter() - start
    return results


def _settings_dict(s: PaperSettings) -> dict[str, Any]:
    d = asdict(s)
    d["mix"] = dict(s.mix)
    return d


def _target(name: str, value: float | None, op: str, bound: float) -> dict[str, Any]:
    """A target: `value op bound`, unknown (None) when nothing was measured."""
    met = None if value is None else value <= bound if op == "<=" else value >= bound
    return {"target": name, "measured": value, "goal": f"{op} {bound:g}", "met": met}


def check_targets(s: PaperSettings, r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    head = str(s.headline_intensity)
    for seqs, load in r.get("load", {}).items():
        rows = load["by_intensity"].get(head)
        if rows is None or "vllm" not in rows or "gittins" not in rows:
            continue
        g, v = rows["gittins"], rows["vllm"]
        where = f"max_num_seqs {seqs}, intensity {head}"
        mean = reduction(g["act_mean"], v["act_mean"])
        out.append(_target(f"gittins vs vllm, mean ACT ({where})", mean, "<=", -0.70))
        p95 = reduction(g["act_p95"], v["act_p95"])
        out.append(_target(f"gittins vs vllm, P95 ACT ({where})", p95, "<=", -0.80))
        if "oracle" in rows:
            gap = reduction(g["act_mean"], rows["oracle"]["act_mean"])
            out.append(_target(f"gittins vs oracle, mean ACT ({where})", gap, "<=", 0.10))
        for other in ("srjf-mean", "plas"):
            if other in rows:
                d = reduction(g["act_mean"], rows[other]["act_mean"])
                # 0.5 % slack: policies that rank alike differ by event-order noise.
                out.append(_target(f"gittins vs {other}, mean ACT ({where})", d, "<=", 0.005))
    for seqs, rows in r.get("deadlines", {}).items():
        for factor, cell in rows.items():
            e, lst = cell["edf"]["dsr"], cell["lstf"]["dsr"]
            diff = None if e is None or lst is None else lst - e
            name = f"lstf minus edf deadline satisfaction ({factor}x, max_num_seqs {seqs})"
            out.append(_target(name, diff, ">=", 0.0))
    pw = r.get("prewarm", {}).get("policies", {})
    if "none" in pw and "pdgraph" in pw:
        base = pw["none"]["cold_wait_s"]
        removed = None if base == 0 else 1.0 - pw["pdgraph"]["cold_wait_s"] / base
        out.append(_target("pdgraph: share of none's critical-path cold wait removed",
                           removed, ">=", 0.80))  # fmt: skip
        as_good = [
            (float(ttl), row)
            for ttl, row in r["prewarm"]["keepalive_ttl"].items()
            if row["cold_wait_s"] <= pw["pdgraph"]["cold_wait_s"]
        ]
        if as_good:
            ttl, row = min(as_good, key=lambda x: x[0])
            ratio = pw["pdgraph"]["warm_instance_s"] / row["warm_instance_s"]
            name = (
                f"pdgraph warm backend-seconds / those of keepalive TTL {ttl:g} s "
                "(the shortest TTL that removes as much cold wait)"
            )
            out.append(_target(name, ratio, "<=", 1.0))
    rounds = r.get("overhead", {}).get("rounds", [])
    if rounds:
        worst = max(rounds, key=lambda x: x["apps"])
        name = f"ranking round over {worst['apps']} active applications, ms"
        out.append(_target(name, worst["round_ms"], "<=", 10.0))
    tools = r.get("tools")
    if tools is not None:
        at = tools["setting"]
        oracle = tools.get("reduction_oracle")  # what the best order we can build gives
        bound = "" if oracle is None else f"; a clairvoyant order: {100 * oracle:+.1f} %"
        name = (
            f"policy-ordered vs FIFO tool pools, mean ACT ({at['layout']} pool of "
            f"{at['instances']}, intensity {s.tools_intensity:g}, {at['replicas']} replicas"
            f"{bound})"
        )
        out.append(_target(name, tools["reduction"], "<=", -0.20))
    out += _kv_targets(r.get("kv"))
    load = r.get("load", {}).get(str(VLLM_DEFAULT_SEQS))
    for k, rows in (load or {}).get("by_intensity", {}).items():
        if float(k) in (1.0, s.headline_intensity):
            where = f"max_num_seqs {VLLM_DEFAULT_SEQS}, intensity {k}"
            out += admission_targets(rows, where, float(k))
    out += sweep_targets(r.get("admission"))
    return out


def _kv_targets(kv: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """pdgraph retention against lru and ttl: faster where memory is tight, no slower where
    it is not."""
    if kv is None:
        return []
    out = []
    for setting, rows in kv["by_setting"].items():
        for who in ("pdgraph", "free-cache reference"):
            if who not in rows or (who != "pdgraph" and not setting.startswith("tight")):
                continue  # the reference: how much any retention could cut, where it can
            p = rows[who]["act_mean"]
            for other, bound in (("lru", -0.25), ("ttl", -0.10)):
                d = reduction(p, rows[other]["act_mean"])
                goal = bound if setting.startswith("tight") else 0.02
                name = f"{who} vs {other} retention, mean ACT ({setting})"
                out.append(_target(name, d, "<=", goal))
    return out
